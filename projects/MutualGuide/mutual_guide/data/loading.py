"""
The dataset dicts the trainer's loaders use: checked (check.py), with bad images left out when
DATALOADER.SKIP_BAD_IMAGES says so, and the training boxes in DATASETS.BOX_CONVENTION (box_convention.py).
"""
import itertools
import os

from detectron2.data import MetadataCatalog
from detectron2.data.build import filter_images_with_only_crowd_annotations, print_instances_class_histogram

from mutual_guide.data.box_convention import to_box_convention
from mutual_guide.data.check import checked_records
from mutual_guide.data.problems import DatasetError

__all__ = ["check_datasets", "test_dataset_dicts", "training_dataset_dicts"]


def _report_dir(cfg):
    return os.path.join(cfg.OUTPUT_DIR, "dataset_check")


def check_datasets(cfg, names):
    """Check every dataset of `names` now (before the first iteration); raises DatasetError on errors."""
    for name in names:
        checked_records(name, cfg.DATALOADER.SKIP_BAD_IMAGES, _report_dir(cfg))


def training_dataset_dicts(cfg):
    """
    The records of DATASETS.TRAIN, checked, in DATASETS.BOX_CONVENTION; then what detectron2's
    get_detection_dataset_dicts does after loading (crowd-only filter, class-name consistency, histogram).
    """
    names = list(cfg.DATASETS.TRAIN)
    per_dataset = []
    for name in names:
        records = checked_records(name, cfg.DATALOADER.SKIP_BAD_IMAGES, _report_dir(cfg))
        fmt = MetadataCatalog.get(name).get("evaluator_type", None)
        per_dataset.append(to_box_convention(records, cfg.DATASETS.BOX_CONVENTION, fmt, name))
    dicts = list(itertools.chain.from_iterable(per_dataset))
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    if not dicts:
        raise DatasetError(f"DATASETS.TRAIN {tuple(names)}: no image left to train on")
    classes = [MetadataCatalog.get(n).get("thing_classes", None) for n in names]
    if any(c != classes[0] for c in classes):
        raise DatasetError(
            "The datasets of DATASETS.TRAIN have different classes: "
            + "; ".join(f"{n!r}: {c}" for n, c in zip(names, classes))
        )
    if classes[0] is not None:
        print_instances_class_histogram(dicts, classes[0])
    return dicts


def test_dataset_dicts(cfg, name):
    """The checked records of one test dataset (annotations in detectron2's convention; the mapper drops them)."""
    return checked_records(name, cfg.DATALOADER.SKIP_BAD_IMAGES, _report_dir(cfg))
