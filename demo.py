#!/usr/bin/env python
"""
Draw a trained detector's predictions on images, a video or a webcam, with detectron2's Visualizer.

    python demo.py --config-file configs/mg_vgg16_fpn_voc.yaml --input 'photos/*.jpg' --output drawn/ \\
        --json drawn/predictions.json --opts MODEL.WEIGHTS output/mg_vgg16_fpn_voc/model_final.pth
    python demo.py --config-file ... --video-input clip.mp4 --output drawn/clip.mp4 --opts MODEL.WEIGHTS ...
    python demo.py --config-file ... --webcam --output webcam.mp4 --max-frames 300 --opts MODEL.WEIGHTS ...

--input takes image files, folders (every image inside) and quoted globs; each drawing keeps its input's path
relative to the inputs' common folder under --output. A video's drawing is written with cv2.VideoWriter to
--output when it ends in .mp4 or .avi, else to <--output>/<video name>.mp4. Class names come from --dataset
or the config's first DATASETS.TEST (any registered or DATASETS.CUSTOM dataset). --json saves every
prediction drawn (file, frame for videos, box XYXY in the original image's pixels, score, class id and name).

Each image goes through the test-time transform of the config's dataset mapper (MutualGuidePredictor): squashed
to INPUT.SIZE for the Mutual Guidance configs, shortest edge to INPUT.MIN_SIZE_TEST for the RetinaNet ones. Large
images with small objects: --opts TEST.SLICE.ENABLED True detects on overlapping tiles (docs/deployment.md).

Drawings are at least 512 pixels wide and at most 2048 on their longest side (mutual_guide/utils/drawing.py).
Grayscale and palette images are converted to colour, an alpha channel is dropped. An image over
--max-megapixels (default 150; a 12000 x 12000 photo is 144 megapixels, 0.4 GB decoded, and took the demo
to 1.7 GB at its peak, against 0.9 GB on a small image) is refused from its header, before decoding. A file that cannot be used is reported with
the reason and the others are still drawn; the exit status is 1 when any input failed. Without MODEL.WEIGHTS
the demo refuses to run unless --allow-random-weights is given.
"""
import argparse
import glob
import json
import logging
import math
import os
import sys

import cv2
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

from mutual_guide import add_mutual_guide_config
from mutual_guide.data import register_custom_datasets
from mutual_guide.data.coco_reader import read_coco_dataset
from mutual_guide.data.image_header import read_image_size
from mutual_guide.data.image_io import read_image as decode_image
from mutual_guide.engine.predictor import MutualGuidePredictor
from mutual_guide.engine.preflight import check_config, check_num_classes
from mutual_guide.utils.atomic_io import AtomicFile, refuse_to_replace, write_image
from mutual_guide.utils.drawing import MAX_DRAWING_SIDE, above_threshold, draw_predictions

DEFAULT_FPS = 25.0  # when the source does not say (webcams often report 0)

logger = logging.getLogger("demo")

# ----------------------------------------------------------------------------- inputs and where drawings go
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}  # output suffix -> cv2.VideoWriter fourcc


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
            if not found:
                failures.append((pattern, f"folder holds no image file (looked for {', '.join(IMAGE_SUFFIXES)})"))
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


def read_image(path, max_megapixels):
    """
    The image as BGR uint8, decoded as training decodes it (mutual_guide/data/image_io.py: EXIF rotation, gray to
    colour, alpha dropped, 16 bits to 8), its size checked from the header first.
    """
    hint = " (a video? use --video-input)" if os.path.splitext(path)[1].lower() in VIDEO_CODECS else ""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own "decompression bomb" refusal: --max-megapixels decides here
    try:
        try:
            width, height = read_image_size(path)
        except OSError as e:
            if hint:
                raise OSError(f"{e}{hint}") from e
            raise
        if width * height > max_megapixels * 1e6:
            raise ValueError(
                f"{width} x {height} pixels ({width * height / 1e6:.0f} megapixels) is over --max-megapixels "
                f"{max_megapixels:g}: decoded, it alone would take {width * height * 3 / 2 ** 30:.1f} GiB. Resize it, "
                f"or give a larger --max-megapixels (the network sees it at its test size, or in tiles with "
                f"TEST.SLICE.ENABLED, and it is drawn at most {MAX_DRAWING_SIDE} pixels on its longest side)"
            )
        try:
            return decode_image(path, format="BGR")
        except ValueError:  # a pixel format the decoder refuses: its message says which
            raise
        except Exception as e:
            raise OSError(f"cannot read the image (damaged or not an image: {type(e).__name__}: {e}){hint}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def video_output(output, source_name):
    """The video file of --output: itself when it ends in a VIDEO_CODECS suffix, else <output>/<source>.mp4."""
    if os.path.splitext(output)[1].lower() in VIDEO_CODECS:
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(source_name))[0] + ".mp4")


def get_parser():
    parser = argparse.ArgumentParser(description="Mutual Guidance detector demo")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or quoted globs")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the first camera (cv2.VideoCapture(0))")
    parser.add_argument("--output", required=True,
                        help="folder for the drawings (created if needed); for a video, a .mp4/.avi file or a folder")
    parser.add_argument("--dataset", metavar="NAME", help="where class names come from (default: DATASETS.TEST[0])")
    parser.add_argument("--json", metavar="FILE", help="save every prediction drawn into this JSON file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace drawings, --json and video files that already exist (refused otherwise)")
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help="draw predictions scoring at least this; default: the best-F1 score of the weights' "
                             "evaluation (<weights folder>/eval/<dataset>/per_class.json), else 0.3")
    parser.add_argument("--max-megapixels", type=float, default=150.0,
                        help="larger images are refused before decoding (default 150)")
    parser.add_argument("--max-frames", type=int, default=0, help="stop a video or the webcam after so many frames")
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="run without MODEL.WEIGHTS (an untrained network's boxes); refused otherwise",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def class_metadata(cfg, dataset_name=None):
    """
    The metadata of `dataset_name` (else DATASETS.TEST[0]) with its class names, or None (class ids are drawn).
    A COCO json's names are in its "categories", which the readers only put into the metadata when they read
    the whole dataset (so a demo that never reads it drew class ids): they are read here from the json.
    """
    name = dataset_name or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    if name is None or name not in DatasetCatalog.list():
        if dataset_name:
            raise ValueError(f"--dataset {dataset_name!r} is not a registered dataset; declare it in DATASETS.CUSTOM "
                             f"(see the README) or name one of: {', '.join(sorted(DatasetCatalog.list()))}")
        logger.warning(f"No registered dataset to take class names from (DATASETS.TEST: {tuple(cfg.DATASETS.TEST)}):"
                       " class ids are drawn. Name one with --dataset.")
        return None
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes", None) is None and metadata.get("json_file", None):
        _, problems, found = read_coco_dataset(metadata.json_file, metadata.get("image_root", ""))
        if not found:
            raise ValueError(f"Dataset {name!r}: no class names in {metadata.json_file}: {problems[0].message}")
        metadata.set(**found)
    elif metadata.get("thing_classes", None) is None:
        DatasetCatalog.get(name)  # a loader of its own (user code) sets them, as detectron2's do
    try:
        check_num_classes(cfg, [name])
    except ValueError as e:
        raise ValueError(f"{e}, or name the dataset your classes come from with --dataset") from None
    return metadata


def prediction_records(file_name, instances, metadata, threshold, frame=None):
    """--json entries of the predictions scoring at least `threshold` (one number or one per class), boxes in the
    original image's pixels."""
    instances = above_threshold(instances, threshold)
    names = metadata.get("thing_classes", None) if metadata is not None else None
    records = []
    for box, score, cls in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(),
                               instances.pred_classes.tolist()):
        record = {"file": file_name} if frame is None else {"file": file_name, "frame": frame}
        record.update(box_xyxy=[round(v, 2) for v in box], score=round(score, 5), class_id=cls,
                      class_name=names[cls] if names is not None else None)
        records.append(record)
    return records


class Demo:
    """Predicts, draws and collects the --json records of images and video frames; failures are kept."""

    def __init__(self, cfg, args, metadata):
        self.predictor = MutualGuidePredictor(cfg)
        self.args, self.metadata = args, metadata
        self.predictions, self.inputs, self.failures = [], [], []
        self.note = None  # what the drawings say in their corner: the threshold and why

    def draw(self, image, file_name, frame=None):
        """(the drawing, how many predictions it shows)"""
        instances = self.predictor(image).to("cpu")
        shown = prediction_records(file_name, instances, self.metadata, self.args.confidence_threshold, frame)
        self.predictions += shown
        drawing = draw_predictions(image, instances, self.metadata, self.args.confidence_threshold, note=self.note)
        return drawing, len(shown)

    def fail(self, source, error):
        why = f"{type(error).__name__}: {error}"
        self.failures.append((source, why))
        logger.error(f"{source}: {why}")

    def images(self, patterns, output_dir):
        paths, failures = expand_inputs(patterns)
        self.failures += failures
        outs = output_paths(paths, output_dir)
        # before the first prediction: no drawing over an input, none over an earlier drawing without --overwrite
        refuse_to_replace(outs, flag="--overwrite", allowed=self.args.overwrite, inputs=paths)
        for path, out in zip(paths, outs):
            try:
                image = read_image(path, self.args.max_megapixels)
                drawing, shown = self.draw(image, path)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                write_image(out, drawing)
            except Exception as e:  # one bad file must not stop the others; all are reported at the end
                self.fail(path, e)
                continue
            height, width = image.shape[:2]
            self.inputs.append({"file": path, "width": width, "height": height})
            logger.info(f"{path} ({width} x {height}): {shown} detections drawn -> "
                        f"{out} ({drawing.shape[1]} x {drawing.shape[0]})")
        return len(self.inputs)

    def video(self, capture, source, out):
        """Every frame of an opened cv2.VideoCapture drawn into the video `out`; returns the frames drawn."""
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        writer, frames, size = None, 0, None
        try:
            while not self.args.max_frames or frames < self.args.max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                drawing, _ = self.draw(frame, source, frames)
                # encoders want even sides (FFmpeg's mp4v wrote a 341-row drawing as 340 rows): one row or
                # column repeated
                drawing = cv2.copyMakeBorder(drawing, 0, drawing.shape[0] % 2, 0, drawing.shape[1] % 2,
                                             cv2.BORDER_REPLICATE)
                if writer is None:
                    size = frame.shape[:2]
                    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
                    fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[os.path.splitext(out)[1].lower()])
                    writer = cv2.VideoWriter(out, fourcc, fps, (drawing.shape[1], drawing.shape[0]))
                    if not writer.isOpened():
                        raise OSError(f"cv2.VideoWriter cannot write {out}")
                writer.write(drawing)
                frames += 1
                if frames % 50 == 0:
                    logger.info(f"{source}: {frames} frames drawn")
        except KeyboardInterrupt:  # the way to stop a webcam: the video so far is kept
            logger.info(f"{source}: interrupted after {frames} frames")
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if frames == 0:
            raise OSError("no frame could be read (empty, damaged, or a codec OpenCV lacks)")
        self.inputs.append({"file": source, "frames": frames, "width": size[1], "height": size[0]})
        logger.info(f"{source}: {frames} frames at {fps:g} fps -> {out}")
        return frames


def run_video(demo, args):
    source = args.video_input if args.video_input else "webcam:0"
    try:
        out = video_output(args.output, source if args.video_input else "webcam")
        refuse_to_replace([out], flag="--overwrite", allowed=args.overwrite,
                          inputs=[args.video_input] if args.video_input else [])
        if args.video_input:
            capture = cv2.VideoCapture(args.video_input)
            if not capture.isOpened():
                raise OSError("cannot open the video (missing, not a video, or a codec OpenCV lacks)")
        else:
            capture = cv2.VideoCapture(0)
            if not capture.isOpened():
                raise OSError("no camera could be opened (cv2.VideoCapture(0)): is one connected, and free?")
        return demo.video(capture, source, out)
    except Exception as e:
        demo.fail(source, e)
        return 0


DEFAULT_THRESHOLD = 0.3


def drawing_threshold(args, cfg, num_classes=None):
    """
    (threshold, why): --confidence-threshold when given; else the scores of best F1 that the evaluation of these
    weights found (OUTPUT_DIR/eval/<dataset>/per_class.json beside MODEL.WEIGHTS, written by every evaluation): one
    per class where each class has one, the best over all classes otherwise, so that a drawing shows what a person
    should believe; else DEFAULT_THRESHOLD.
    """
    if args.confidence_threshold is not None:
        return args.confidence_threshold, "--confidence-threshold"
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    if cfg.MODEL.WEIGHTS and dataset:
        report = os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS)), "eval", dataset, "per_class.json")
        try:
            with open(report) as f:
                content = json.load(f)
        except (OSError, ValueError):
            content = {}
        overall, per_class = content.get("best_f1"), list((content.get("best_f1_per_class") or {}).values())
        if per_class and all(per_class) and (num_classes is None or len(per_class) == num_classes):
            return [float(best["score"]) for best in per_class], f"each class's best-F1 score on {dataset}"
        if overall:
            return float(overall["score"]), f"best F1 {overall['f1']:.2f} on {dataset}"
    return DEFAULT_THRESHOLD, "default; no evaluation beside the weights"


def _describe_threshold(threshold, metadata):
    if isinstance(threshold, (int, float)):
        return f"score >= {threshold:.2f}"
    names = metadata.get("thing_classes", None) if metadata is not None else None
    names = names or [str(k) for k in range(len(threshold))]
    return "score >= " + ", ".join(f"{name} {t:.2f}" for name, t in zip(names, threshold))


def _input_files(args, cfg, metadata):
    """Every file this demo reads: the images, the video, the config, the weights and the dataset's annotations."""
    files = [args.config_file, cfg.MODEL.WEIGHTS]
    if args.input:
        files += expand_inputs(args.input)[0]
    if args.video_input:
        files.append(args.video_input)
    if metadata is not None:
        files += [metadata.get(key, "") for key in ("json_file",)]
    return [f for f in files if f]


def write_json(path, demo, cfg, args):
    """Everything --json promises, written atomically: the file appears whole or not at all."""
    names = demo.metadata.get("thing_classes", None) if demo.metadata is not None else None
    content = {
        "config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS, "classes": names,
        "confidence_threshold": args.confidence_threshold, "inputs": demo.inputs,
        "failed": [{"file": source, "error": why} for source, why in demo.failures],
        "predictions": demo.predictions,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with AtomicFile(path, "w") as f:
        json.dump(content, f, indent=1)
    logger.info(f"{len(demo.predictions)} predictions of {len(demo.inputs)} input(s) saved to {path}")


def main(argv=None):
    """Draw every input; returns how many images (or frames) were drawn, or exits with status 1 after the
    report if any input failed."""
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logger(name="mutual_guide")
    setup_logger(name="demo")
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
    try:
        metadata = class_metadata(cfg, args.dataset)
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        # before anything is predicted: --json names neither an input of the run nor an existing file
        try:
            refuse_to_replace([args.json], flag="--overwrite", allowed=args.overwrite,
                              inputs=_input_files(args, cfg, metadata))
        except FileExistsError as e:
            parser.error(f"--json: {e}")
    args.confidence_threshold, why = drawing_threshold(args, cfg, cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES)
    shown = _describe_threshold(args.confidence_threshold, metadata)
    logger.info(f"Drawing predictions of {shown} ({why})")
    demo = Demo(cfg, args, metadata)
    # the corner of a drawing has room for a short note: one threshold, or where the per-class ones come from
    demo.note = f"{shown} ({why})" if isinstance(args.confidence_threshold, (int, float)) else f"score >= {why}"
    try:
        drawn = demo.images(args.input, args.output) if args.input else run_video(demo, args)
    except FileExistsError as e:
        parser.error(f"--output: {e}")
    if args.json:
        write_json(args.json, demo, cfg, args)
    if demo.failures:
        report = "\n".join(f"  {source}: {why}" for source, why in demo.failures)
        logger.error(f"{len(demo.failures)} input(s) failed, {drawn} drawn:\n{report}")
        raise SystemExit(1)
    return drawn


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(0 if main() else 1)
