"""
Datasets declared in the config, without code: each DATASETS.CUSTOM entry is "name:format:key=value;key=value".

    "mydata_train:voc:root=/data/mine;split=train;classes=cat,dog"        (optional: year=2007, default 2012)
    "mydata_val:coco:json=/data/mine/val.json;images=/data/mine/images"

They get the metadata detectron2's register_pascal_voc / register_coco_instances give (so datasets registered
in Python with those functions evaluate the same way), and are read by our readers (voc_reader.py,
coco_reader.py), which accept what the formats allow and name the file of every problem.
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from mutual_guide.data.builtin import VOC_LAYOUT, register_coco_checked, register_voc_checked, voc_required_paths

__all__ = ["parse_custom_spec", "register_custom_dataset", "register_custom_datasets"]

logger = logging.getLogger(__name__)

EXPECTED_FORM = (
    'expected "name:voc:root=<folder>;split=<split>;classes=<a>,<b>[;year=2007]" or '
    '"name:coco:json=<file.json>;images=<folder>"'
)
_KEYS = {"voc": ({"root", "split", "classes"}, {"year"}), "coco": ({"json", "images"}, set())}


def parse_custom_spec(entry):
    """Split one DATASETS.CUSTOM entry into (name, format, options); ValueError naming it when malformed."""

    def fail(why):
        return ValueError(f"Malformed DATASETS.CUSTOM entry {entry!r}: {why}; {EXPECTED_FORM}")

    if not isinstance(entry, str) or entry.count(":") < 2:
        raise fail("not of the form name:format:options")
    name, fmt, rest = (part.strip() for part in entry.split(":", 2))
    if not name:
        raise fail("empty dataset name")
    if fmt not in _KEYS:
        raise fail(f"unknown format {fmt!r}")
    options = {}
    for item in filter(None, (s.strip() for s in rest.split(";"))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not key or not value:
            raise fail(f"{item!r} is not key=value")
        if key in options:
            raise fail(f"key {key!r} given twice")
        options[key] = value
    required, optional = _KEYS[fmt]
    if required - options.keys():
        raise fail(f"missing key(s) {sorted(required - options.keys())}")
    if options.keys() - required - optional:
        raise fail(f"unknown key(s) {sorted(options.keys() - required - optional)}")
    if fmt == "voc":
        classes = [c.strip() for c in options["classes"].split(",")]
        if not all(classes) or len(set(classes)) != len(classes):
            raise fail("classes must be distinct non-empty names separated by commas")
        options["classes"] = classes
        if not options.get("year", "2012").isdigit():
            raise fail(f"year must be a number, got {options['year']!r}")
        options["year"] = int(options.get("year", 2012))
    return name, fmt, options


def _check_exists(entry, key, path, what, layout):
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"DATASETS.CUSTOM entry {entry!r}: {what} of {key}= not found: {path}. Expected layout: {layout}"
        )


def register_custom_dataset(entry):
    """Register one entry; nothing to do when `name` is already registered from the same entry."""
    name, fmt, options = parse_custom_spec(entry)
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("custom_spec", None) == entry:
            return name
        raise ValueError(
            f"DATASETS.CUSTOM entry {entry!r}: a dataset named {name!r} is already registered "
            f"(from {MetadataCatalog.get(name).get('custom_spec', 'Python code')!r}); choose another name"
        )
    if fmt == "voc":
        root = options["root"]
        for path, what in voc_required_paths(root, options["split"]):
            _check_exists(entry, "root", path, what, VOC_LAYOUT)
        register_voc_checked(name, root, options["split"], options["year"], options["classes"], custom_spec=entry)
    else:
        layout = "a COCO instances json file and the folder of its images"
        _check_exists(entry, "json", options["json"], "annotation file", layout)
        _check_exists(entry, "images", options["images"], "image folder", layout)
        register_coco_checked(name, {"custom_spec": entry}, options["json"], options["images"])
    logger.info(f"Registered dataset {name!r} ({fmt}) from DATASETS.CUSTOM")
    return name


def register_custom_datasets(cfg):
    """Register every DATASETS.CUSTOM entry of `cfg`; returns their names."""
    return [register_custom_dataset(entry) for entry in cfg.DATASETS.CUSTOM]
