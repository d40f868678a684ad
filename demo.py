#!/usr/bin/env python
"""
Draw a trained detector's predictions on images with detectron2's Visualizer.

    python demo.py --config-file configs/mg_vgg16_fpn_voc.yaml --input 'photos/*.jpg' --output drawn/ \
        --confidence-threshold 0.3 --opts MODEL.WEIGHTS output/mg_vgg16_fpn_voc/model_final.pth

--input takes image files, folders (every image inside) and quoted globs. Class names come from the first
dataset in DATASETS.TEST (register custom ones with DATASETS.CUSTOM, see the README).

Each drawing keeps its input's path relative to the inputs' common folder (a/photo.jpg, a/photo.png and
b/photo.jpg give three files under --output). A file that cannot be read or drawn is reported and the
others are still drawn; the exit status is 1 when any input failed. Without MODEL.WEIGHTS the demo refuses
to run unless --allow-random-weights is given.
"""
import argparse
import glob
import logging
import os
import sys

import cv2

from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from mutual_guide import add_mutual_guide_config
from mutual_guide.data import register_custom_datasets
from mutual_guide.drawing import draw_predictions
from mutual_guide.predictor import MutualGuidePredictor
from mutual_guide.preflight import check_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns):
    """
    (image paths, failures) from files, folders and globs: each file once, in a stable order; an input
    matching no image file is a failure (input, reason), and the others are still used.
    """
    paths, seen, failures = [], set(), []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
            found = [f for f in found if f.lower().endswith(IMAGE_SUFFIXES)]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            failures.append((pattern, "matches no image file"))
        for path in found:
            if os.path.abspath(path) not in seen:
                seen.add(os.path.abspath(path))
                paths.append(path)
    return paths, failures


def output_paths(paths, output_dir):
    """Where each input's drawing goes: its path relative to the inputs' common folder, under `output_dir`."""
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [os.path.join(output_dir, os.path.relpath(p, common)) for p in absolute]


def get_parser():
    parser = argparse.ArgumentParser(description="Mutual Guidance detector demo")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or quoted globs")
    parser.add_argument("--output", required=True, help="folder for the drawings (created if needed)")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="run without MODEL.WEIGHTS (an untrained network's boxes); refused otherwise",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    """Draw every input; returns how many were drawn, or exits with status 1 after the report if any failed."""
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logger(name="mutual_guide")
    logger = setup_logger(name="demo")
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS and not args.allow_random_weights:
        parser.error(
            "MODEL.WEIGHTS is not set, so the network would be randomly initialised and draw meaningless boxes. "
            "Give the trained weights (--opts MODEL.WEIGHTS path/to/model_final.pth), or add "
            "--allow-random-weights to run an untrained network on purpose."
        )
    check_config(cfg, training=False)
    register_custom_datasets(cfg)
    predictor = MutualGuidePredictor(cfg)
    paths, failures = expand_inputs(args.input)
    drawn = 0
    for path, out in zip(paths, output_paths(paths, args.output)):
        try:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise OSError("cannot read the image (missing, not an image, or damaged)")
            instances = predictor(image).to("cpu")
            drawing = draw_predictions(image, instances, predictor.metadata, args.confidence_threshold)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            if not cv2.imwrite(out, drawing):
                raise OSError(f"cannot write the drawing to {out}")
        except Exception as e:  # one bad file must not stop the others; all are reported at the end
            failures.append((path, f"{type(e).__name__}: {e}"))
            logger.error(f"{path}: {type(e).__name__}: {e}")
            continue
        drawn += 1
        kept = int((instances.scores >= args.confidence_threshold).sum())
        logger.info(f"{path}: {kept} detections >= {args.confidence_threshold} -> {out}")
    if failures:
        report = "\n".join(f"  {path}: {why}" for path, why in failures)
        logger.error(f"{len(failures)} input(s) failed, {drawn} drawn:\n{report}")
        raise SystemExit(1)
    return drawn


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(0 if main() else 1)
