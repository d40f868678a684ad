"""
The paper's datasets under $DETECTRON2_DATASETS (default "datasets"), registered on import without touching
the disk. A missing folder or file fails when the dataset is first loaded (DatasetCatalog.get), with a
FileNotFoundError that names the path looked for and the layout expected; `check_dataset_paths` runs the same
checks up front (the trainer calls it at start).

    mg_voc_2007_trainval, mg_voc_2012_trainval, mg_voc_2007_test   VOCdevkit/VOC2007|VOC2012
    mg_coco_2017_train, mg_coco_2017_val                           coco2017/annotations, coco2017/{train,val}2017
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from mutual_guide.data.check import register_checked_dataset
from mutual_guide.data.coco_reader import read_coco_dataset
from mutual_guide.data.voc_reader import read_voc_dataset
from mutual_guide.utils.detectron2_compat import builtin_coco_metadata

__all__ = [
    "VOC_CLASS_NAMES",
    "check_dataset_paths",
    "register_all_mutual_guide",
    "register_coco_checked",
    "register_voc_checked",
    "voc_required_paths",
]

VOC_LAYOUT = (
    "<root>/Annotations/<id>.xml, <root>/JPEGImages/<id>.jpg and <root>/ImageSets/Main/<split>.txt (one id a line)"
)
COCO_LAYOUT = (
    "<root>/coco2017/annotations/instances_{train,val}2017.json and the images in <root>/coco2017/{train,val}2017/"
)

_VOC_SPLITS = {
    "mg_voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "mg_voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "mg_voc_2007_test": ("VOC2007", "test", 2007),
}
_COCO_SPLITS = {
    "mg_coco_2017_train": ("coco2017/train2017", "coco2017/annotations/instances_train2017.json"),
    "mg_coco_2017_val": ("coco2017/val2017", "coco2017/annotations/instances_val2017.json"),
}
# Where each builtin dataset's files must be, for check_dataset_paths: name -> [(path, what it is)].
_REQUIRED_PATHS = {}


def voc_required_paths(dirname, split):
    """The parts a VOC folder must have, as (path, description)."""
    return [
        (dirname, "dataset folder"),
        (os.path.join(dirname, "Annotations"), "annotation folder"),
        (os.path.join(dirname, "JPEGImages"), "image folder"),
        (os.path.join(dirname, "ImageSets", "Main", split + ".txt"), "split file"),
    ]


def _missing_error(name, missing, layout):
    path, what = missing[0]
    return FileNotFoundError(
        f"Dataset {name!r}: {what} not found: {path}. Expected layout: {layout}. <root> is "
        f"$DETECTRON2_DATASETS (now {os.environ.get('DETECTRON2_DATASETS', 'datasets')!r})."
    )


def _check_paths(name):
    missing = [(path, what) for path, what in _REQUIRED_PATHS.get(name, []) if not os.path.exists(path)]
    if missing:
        layout = VOC_LAYOUT if MetadataCatalog.get(name).get("evaluator_type") == "pascal_voc" else COCO_LAYOUT
        raise _missing_error(name, missing, layout)


def check_dataset_paths(names):
    """Raise FileNotFoundError naming the first missing path of the builtin datasets among `names`."""
    for name in names:
        _check_paths(name)


def register_voc_checked(name, dirname, split, year, class_names=VOC_CLASS_NAMES, **metadata):
    """
    register_pascal_voc's metadata, read by our VOC reader (voc_reader.py), with evaluator_type and a check
    of the layout before reading.
    """

    def read():
        _check_paths(name)
        return read_voc_dataset(dirname, split, class_names)

    _REQUIRED_PATHS[name] = voc_required_paths(dirname, split)
    register_checked_dataset(
        name, read, thing_classes=list(class_names), dirname=dirname, year=year, split=split,
        evaluator_type="pascal_voc", **metadata
    )


def register_coco_checked(name, metadata, json_file, image_root):
    """
    register_coco_instances' metadata, read by our COCO reader (coco_reader.py), with a check of the json
    file and image folder before reading. Class names and ids are set from the json when it is read.
    """

    def read():
        _check_paths(name)
        records, problems, found = read_coco_dataset(json_file, image_root)
        if found:
            MetadataCatalog.get(name).set(**found)
        return records, problems

    _REQUIRED_PATHS[name] = [(json_file, "annotation json file"), (image_root, "image folder")]
    register_checked_dataset(
        name, read, json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def register_all_mutual_guide(root):
    for name, (folder, split, year) in _VOC_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_voc_checked(name, os.path.join(root, "VOCdevkit", folder), split, year)
    for name, (image_root, json_file) in _COCO_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_coco_checked(
                name, builtin_coco_metadata(), os.path.join(root, json_file), os.path.join(root, image_root)
            )


register_all_mutual_guide(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
