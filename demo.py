#!/usr/bin/env python
"""
Draw a trained detector's predictions on images with detectron2's Visualizer.

    python demo.py --config-file configs/mg_vgg16_fpn_voc.yaml --input 'photos/*.jpg' --output drawn/ \
        --confidence-threshold 0.3 --opts MODEL.WEIGHTS output/mg_vgg16_fpn_voc/model_final.pth

--input takes image files, folders (every image inside) and quoted globs. Class names come from the first
dataset in DATASETS.TEST (register custom ones with DATASETS.CUSTOM, see the README).
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

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns):
    """Image paths from files, folders and globs, in a stable order; an input matching nothing is an error."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
            found = [f for f in found if f.lower().endswith(IMAGE_SUFFIXES)]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern!r} matches no image file")
        paths.extend(found)
    return paths


def get_parser():
    parser = argparse.ArgumentParser(description="Mutual Guidance detector demo")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or quoted globs")
    parser.add_argument("--output", required=True, help="folder for the drawings (created if needed)")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="mutual_guide")
    logger = setup_logger(name="demo")
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    register_custom_datasets(cfg)
    predictor = MutualGuidePredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    paths = expand_inputs(args.input)
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"Cannot read image {path!r}")
        instances = predictor(image).to("cpu")
        drawn = draw_predictions(image, instances, predictor.metadata, args.confidence_threshold)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".jpg")
        cv2.imwrite(out, drawn)
        kept = int((instances.scores >= args.confidence_threshold).sum())
        logger.info(f"{path}: {kept} detections >= {args.confidence_threshold} -> {out}")
    return len(paths)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(0 if main() else 1)
