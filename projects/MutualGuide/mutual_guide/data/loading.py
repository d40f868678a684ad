"""
The dataset dicts the trainer's loaders use: checked (check.py), with bad images left out when
DATALOADER.SKIP_BAD_IMAGES says so, and the training boxes in DATASETS.BOX_CONVENTION (box_convention.py).
"""
import itertools
import os

from detectron2.data import MetadataCatalog
from detectron2.data.build import filter_images_with_only_crowd_annotations, print_instances_class_histogram

from mutual_guide.data.box_convention import to_box_convention
from mutual_guide.data.check import checked_records, dataset_source
from mutual_guide.data.problems import DatasetError

__all__ = ["check_class_lists", "check_datasets", "test_dataset_dicts", "training_dataset_dicts"]


def _report_dir(cfg):
    return os.path.join(cfg.OUTPUT_DIR, "dataset_check")


def _checked(cfg, name):
    return checked_records(name, cfg.DATALOADER.SKIP_BAD_IMAGES, _report_dir(cfg), cfg.DATALOADER.CHECK_FULL_DECODE)


def _role(cfg, name):
    return "DATASETS.TRAIN" if name in cfg.DATASETS.TRAIN else "DATASETS.TEST"


def check_datasets(cfg, names):
    """
    Check every dataset of `names` now (before the first iteration), then that they all list the same classes
    in the same order, and that the training datasets hold objects; raises DatasetError on errors.
    """
    for name in names:
        records = _checked(cfg, name)
        objects = sum(1 for r in records for a in r.get("annotations", []) if not a.get("iscrowd", 0))
        if name in cfg.DATASETS.TRAIN and objects == 0:
            raise DatasetError(f"Dataset {name!r} (DATASETS.TRAIN, {dataset_source(name)}): no object in its "
                               f"{len(records)} usable image(s): training would learn background only. Check "
                               "that its annotations are there (a COCO json with an empty 'annotations' list, "
                               "VOC files without <object>).")
    check_class_lists(names, {name: _role(cfg, name) for name in names})


def check_class_lists(names, roles=None):
    """
    Raise DatasetError unless the datasets `names` (already read: a COCO dataset's classes come from its json)
    have the same thing_classes, names and order: the model's class k is the k-th name of every one of them,
    so a training set and a test set listing the same classes in another order would score each class against
    another one's objects. `roles` ({name: "DATASETS.TRAIN"...}) goes into the message. Datasets without
    thing_classes are not compared.
    """
    listed = [(n, MetadataCatalog.get(n).get("thing_classes", None)) for n in names]
    listed = [(n, list(c)) for n, c in listed if c is not None]
    if not listed:
        return
    first, first_classes = listed[0]
    for name, classes in listed[1:]:
        if classes == first_classes:
            continue
        roles = roles or {}

        def described(n, c):
            role = f"{roles[n]} " if n in roles else ""
            return f"{role}{n!r} ({dataset_source(n)}): {len(c)} classes {c}"

        how = ("the same classes in another order" if sorted(classes) == sorted(first_classes)
               else "different classes")
        raise DatasetError(
            f"Datasets {first!r} and {name!r} list {how}; names and order must be identical (class k of the "
            f"model is the k-th name of each):\n  {described(first, first_classes)}\n  {described(name, classes)}\n"
            "Give every dataset the same class list (VOC: the same classes= order; COCO: the same category ids "
            "for the same names)."
        )


def training_dataset_dicts(cfg):
    """
    The records of DATASETS.TRAIN, checked, in DATASETS.BOX_CONVENTION; then what detectron2's
    get_detection_dataset_dicts does after loading (crowd-only filter, class-name consistency, histogram).
    """
    names = list(cfg.DATASETS.TRAIN)
    per_dataset = []
    for name in names:
        records = _checked(cfg, name)
        fmt = MetadataCatalog.get(name).get("evaluator_type", None)
        per_dataset.append(to_box_convention(records, cfg.DATASETS.BOX_CONVENTION, fmt, name))
    dicts = list(itertools.chain.from_iterable(per_dataset))
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    if not dicts:
        raise DatasetError(f"DATASETS.TRAIN {tuple(names)}: no image left to train on")
    check_class_lists(names, {n: "DATASETS.TRAIN" for n in names})
    classes = MetadataCatalog.get(names[0]).get("thing_classes", None)
    if classes is not None:
        print_instances_class_histogram(dicts, classes)
    return dicts


def test_dataset_dicts(cfg, name):
    """The checked records of one test dataset (annotations in detectron2's convention; the mapper drops them)."""
    return _checked(cfg, name)
