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

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng

import mutual_guide
from mutual_guide.data import MutualGuideDatasetMapper, check_dataset_paths, register_custom_datasets
from mutual_guide.data.mapper import read_image_checked
from mutual_guide.utils.atomic_io import refuse_to_replace, write_image
from mutual_guide.utils.drawing import draw_boxes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the drawings (created if needed)")
    parser.add_argument("--augmented", action="store_true", help="draw the training mapper's output")
    parser.add_argument("--overwrite", action="store_true", help="replace drawings that already exist (refused otherwise)")
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


def browse(cfg, dataset_names, output_dir, augmented=False, max_images=100, seed=0, min_width=512, overwrite=False):
    """Draw each dataset into output_dir/<name>/; returns the paths written. Nothing is drawn over an image of the
    dataset, nor over an existing file unless `overwrite` (--overwrite): refused, naming the paths, before drawing."""
    check_dataset_paths(dataset_names)
    mapper = MutualGuideDatasetMapper(cfg, is_train=True) if augmented else None
    seed_all_rng(seed)
    written = []
    for name in dataset_names:
        records = DatasetCatalog.get(name)  # first, as loading a COCO json is what fills its class names
        metadata = MetadataCatalog.get(name)
        folder = os.path.join(output_dir, name)
        chosen = records[: max_images or None]
        paths = [os.path.join(folder, os.path.splitext(os.path.basename(r["file_name"]))[0] + ".jpg") for r in chosen]
        refuse_to_replace(paths, flag="--overwrite", allowed=overwrite, inputs=[r["file_name"] for r in records])
        os.makedirs(folder, exist_ok=True)
        for record, path in zip(chosen, paths):
            image, boxes, classes = as_augmented(record, mapper, cfg.INPUT.FORMAT) if augmented else as_loaded(record)
            write_image(path, draw_boxes(image, boxes, classes, metadata, min_width=min_width)[:, :, ::-1])
            written.append(path)
        print(f"[browse] {min(len(records), max_images or len(records))} drawings of {name} in {folder}")
    return written


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_cfg(args)
    names = args.dataset or list(cfg.DATASETS.TRAIN)
    if not names:
        sys.exit("browse_dataset.py: no dataset to draw: DATASETS.TRAIN is empty and no --dataset was given")
    try:
        return browse(cfg, names, args.output, args.augmented, args.max_images, args.seed, args.min_width,
                      args.overwrite)
    except FileExistsError as e:
        sys.exit(f"browse_dataset.py: --output: {e}")


if __name__ == "__main__":
    main()
