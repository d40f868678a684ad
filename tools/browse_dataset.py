#!/usr/bin/env python
"""
Draw a dataset with its boxes and class names, as loaded or, with --augmented, as the training mapper gives it to
the network (the paper's augmentation and the resize to INPUT.SIZE), with detectron2's Visualizer.

    .venv/bin/python tools/browse_dataset.py --config-file configs/mg_vgg16_fpn_voc.yaml --output browse/
    .venv/bin/python tools/browse_dataset.py --config-file configs/mg_vgg16_fpn_voc.yaml --augmented \
        --output browse_augmented/ --max-images 20

The config's DATASETS.TRAIN are drawn, or the datasets named by --dataset (any registered or DATASETS.CUSTOM
one, e.g. a test set), each into OUTPUT/<dataset>/. Class names come from the dataset's metadata. Drawings are
at least --min-width pixels wide (small images are enlarged), so that a person reads the labels.
"""
import argparse
import os
import sys

import cv2
import numpy as np

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.structures import BoxMode
from detectron2.utils.colormap import colormap
from detectron2.utils.env import seed_all_rng
from detectron2.utils.visualizer import Visualizer

import mutual_guide
from mutual_guide.data import MutualGuideDatasetMapper, check_dataset_paths, register_custom_datasets
from mutual_guide.data.mapper import read_image_checked

PALETTE = colormap(rgb=True, maximum=1)  # detectron2's 74 distinct colours, one per class id


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the drawings (created if needed)")
    parser.add_argument("--augmented", action="store_true", help="draw the training mapper's output")
    parser.add_argument("--dataset", nargs="+", default=None, metavar="NAME", help="default: DATASETS.TRAIN")
    parser.add_argument("--max-images", type=int, default=100, help="per dataset, the first ones; 0: all")
    parser.add_argument("--seed", type=int, default=0, help="of the augmentation: the same seed, the same drawings")
    parser.add_argument("--min-width", type=int, default=512, help="smaller images are enlarged to this width")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser.parse_args(argv)


def setup_cfg(args):
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    register_custom_datasets(cfg)
    return cfg


def draw(image_rgb, boxes, classes, metadata, min_width):
    """
    The boxes (XYXY, the image's pixels) and class names on the image, enlarged to at least `min_width` pixels
    wide, one colour per class; returns the drawing (RGB).
    """
    names = metadata.get("thing_classes", None)
    labels = [names[c] if names is not None else str(c) for c in classes]
    scale = max(1.0, min_width / image_rgb.shape[1])
    visualizer = Visualizer(image_rgb, metadata, scale=scale)
    # The Visualizer's base font, in the image's pixels, is max(sqrt(H * W) // 90, 10 // scale): it shrinks as
    # the scale grows, to 8 points on a 128-pixel image drawn 4x. At least 14 points on the drawing instead; a
    # label is drawn at 0.6 to 1 times this, growing with its box, so it stays smaller than the object it names.
    visualizer._default_font_size = max(visualizer._default_font_size, 14 / scale)
    colours = [PALETTE[c % len(PALETTE)] for c in classes]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return visualizer.overlay_instances(boxes=boxes, labels=labels, assigned_colors=colours).get_image()


def as_loaded(record, image_format="RGB"):
    """(RGB image, XYXY boxes, class ids) of a dataset record, as its annotations say."""
    annotations = [a for a in record.get("annotations", []) if a.get("iscrowd", 0) == 0]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    return read_image_checked(record["file_name"], image_format), boxes, [a["category_id"] for a in annotations]


def as_augmented(record, mapper, image_format):
    """(RGB image, XYXY boxes, class ids) of a record after the training mapper: what the network trains on."""
    out = mapper(record)
    image = convert_image_to_rgb(out["image"].permute(1, 2, 0).numpy(), image_format)
    instances = out["instances"]
    return image, instances.gt_boxes.tensor.numpy(), instances.gt_classes.tolist()


def browse(cfg, dataset_names, output_dir, augmented=False, max_images=100, seed=0, min_width=512):
    """Draw each dataset into output_dir/<name>/; returns the paths written."""
    check_dataset_paths(dataset_names)
    mapper = MutualGuideDatasetMapper(cfg, is_train=True) if augmented else None
    seed_all_rng(seed)
    written = []
    for name in dataset_names:
        records = DatasetCatalog.get(name)  # first, as loading a COCO json is what fills its class names
        metadata = MetadataCatalog.get(name)
        folder = os.path.join(output_dir, name)
        os.makedirs(folder, exist_ok=True)
        for record in records[: max_images or None]:
            image, boxes, classes = as_augmented(record, mapper, cfg.INPUT.FORMAT) if augmented else as_loaded(record)
            path = os.path.join(folder, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".jpg")
            cv2.imwrite(path, draw(image, boxes, classes, metadata, min_width)[:, :, ::-1])
            written.append(path)
        print(f"[browse] {min(len(records), max_images or len(records))} drawings of {name} in {folder}")
    return written


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_cfg(args)
    names = args.dataset or list(cfg.DATASETS.TRAIN)
    if not names:
        sys.exit("browse_dataset.py: no dataset to draw: DATASETS.TRAIN is empty and no --dataset was given")
    return browse(cfg, names, args.output, args.augmented, args.max_images, args.seed, args.min_width)


if __name__ == "__main__":
    main()
