"""
The dataset check: every annotation file parsed and every image header and end read once, before the first
iteration (train_net.py) or by hand (tools/check_dataset.py). Each problem names its file (see problems.py).
Besides the files' own problems it warns of a declared class without any object, of far fewer objects than
images, and of what the decoder changes in an image (16 bits, alpha, EXIF rotation).

Datasets registered by this project (builtin, DATASETS.CUSTOM) are read by our VOC and COCO readers, which
report problems in the files' own terms; datasets registered otherwise (detectron2's register_* functions,
your own code) are loaded through DatasetCatalog and their records checked here. Images, sizes and duplicates
are checked here for all of them.
"""
import logging
import os
from collections import Counter

from tqdm import tqdm

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from mutual_guide.data.image_io import inspect_image
from mutual_guide.data.problems import DatasetError, Problem, box_problem, format_problems

__all__ = [
    "DatasetReport",
    "check_dataset",
    "checked_records",
    "dataset_source",
    "read_by_our_readers",
    "register_checked_dataset",
]

logger = logging.getLogger(__name__)

# name -> read() giving (records, problems), for the datasets our readers read
_READERS = {}
# name -> DatasetReport of this process's last check (a run checks each dataset once)
_CHECKED = {}
# Fewer objects than this per image is worth a warning: a detector trained on that learns mostly background.
SPARSE_OBJECTS_PER_IMAGE = 0.1
_HOW_TO_SKIP = (
    "Fix the files, or set DATALOADER.SKIP_BAD_IMAGES True to leave the images in error out "
    "(tools/check_dataset.py --config-file ... lists every problem)."
)


def register_checked_dataset(name, read, **metadata):
    """
    Register `name` in DatasetCatalog with a loader that refuses data in error, and remember `read` (a
    function returning (records, problems)) for the check.
    """

    def load():
        records, problems = read()
        errors = [p for p in problems if p.error]
        if errors:
            raise DatasetError(f"Dataset {name!r}: {len(errors)} error(s):\n{format_problems(errors)}\n{_HOW_TO_SKIP}",
                               errors)
        return records

    _READERS[name] = read
    _CHECKED.pop(name, None)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**metadata)


def read_by_our_readers(name):
    """Whether `name` is read by our readers (registered by this project), not by a loader of its own."""
    return name in _READERS


class DatasetReport:
    """The result of checking one dataset: its usable records and every problem found."""

    def __init__(self, name, records, problems):
        self.name = name
        self.problems = problems
        self.bad_images = sorted({p.image for p in problems if p.error and p.image})
        bad = set(self.bad_images)
        self.records = [r for r in records if r["file_name"] not in bad]
        self.logged = False
        # objects training would see (crowd regions excluded) in the usable records
        self.num_objects = sum(1 for r in self.records for a in r.get("annotations", []) if not a.get("iscrowd", 0))

    @property
    def errors(self):
        return [p for p in self.problems if p.error]

    @property
    def warnings(self):
        return [p for p in self.problems if not p.error]

    @property
    def fatal(self):
        return [p for p in self.problems if p.fatal]

    def summary(self):
        return (
            f"Dataset {self.name!r}: {len(self.records)} usable image(s), {len(self.bad_images)} image(s) in error, "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        )

    def text(self, limit=None):
        return self.summary() + ("\n" + format_problems(self.problems, limit) if self.problems else "")


def dataset_source(name):
    """The file or folder a dataset is read from, to name in messages (its name when unknown)."""
    meta = MetadataCatalog.get(name)
    if meta.get("json_file", None):
        return meta.json_file
    if meta.get("dirname", None) and meta.get("split", None):
        return os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
    return name


def check_dataset(name, progress=True, full_decode=False):
    """
    Read `name`'s annotations and every image header (with `full_decode`, every image); returns its
    DatasetReport (kept for this process).
    """
    if name in _READERS:
        records, problems = _READERS[name]()
    else:
        records = DatasetCatalog.get(name)  # registered by detectron2's functions or user code
        problems = _record_problems(records, MetadataCatalog.get(name).get("thing_classes", None))
    problems = list(problems) + _duplicate_problems(records)
    if not any(p.fatal for p in problems):
        problems += _image_problems(records, name, progress and comm.is_main_process(), full_decode)
    if not records and not problems:
        problems.append(Problem(name, "the dataset has no image", fatal=True))
    report = DatasetReport(name, records, problems)
    report.problems += _object_count_problems(report)
    _CHECKED[name] = report
    return report


def checked_records(name, skip_bad_images, report_dir=None, full_decode=False):
    """
    The usable records of `name` (detectron2's box convention), checked once per process. Errors raise a
    DatasetError naming the files, unless `skip_bad_images` (DATALOADER.SKIP_BAD_IMAGES), which leaves those
    images out and logs them; a fatal error always raises. With `report_dir`, the full report is written there;
    `full_decode` (DATALOADER.CHECK_FULL_DECODE) decodes every image instead of reading its header and end.
    """
    report = _CHECKED.get(name) or check_dataset(name, full_decode=full_decode)
    where = f" (full list: {os.path.join(report_dir, name + '.txt')})" if report.problems and report_dir else ""
    if report.fatal or (report.errors and not skip_bad_images):
        _write_report(report, report_dir)
        shown = report.fatal or report.errors
        raise DatasetError(f"{report.summary()}{where}:\n{format_problems(shown)}\n"
                           f"{'' if report.fatal else _HOW_TO_SKIP}", shown)
    if report.logged:  # a run asks for its datasets more than once; they are reported once
        return report.records
    report.logged = True
    _write_report(report, report_dir)
    if report.warnings:
        logger.warning(f"Dataset {name!r}: {len(report.warnings)} warning(s){where}:\n"
                       f"{format_problems(report.warnings, 10)}")
    if report.errors:
        reasons = {}
        for p in report.errors:
            reasons.setdefault(p.image, p.message)
        left_out = "\n".join(f"  {path}: {reasons.get(path, '')}" for path in report.bad_images[:50])
        more = f"\n  ... and {len(report.bad_images) - 50} more" if len(report.bad_images) > 50 else ""
        logger.warning(f"DATALOADER.SKIP_BAD_IMAGES: {len(report.bad_images)} image(s) of {name!r} left out "
                       f"for {len(report.errors)} error(s), {len(report.records)} used{where}:\n{left_out}{more}")
    return report.records


def _write_report(report, report_dir):
    if report.problems and report_dir and comm.is_main_process():
        os.makedirs(report_dir, exist_ok=True)
        with open(os.path.join(report_dir, f"{report.name}.txt"), "w") as f:
            f.write(report.text() + "\n")


def _record_problems(records, thing_classes):
    """Problems of records we did not read ourselves: boxes and classes, in detectron2's terms."""
    problems = []
    for record in records:
        file_name = record.get("file_name", "?")
        for k, ann in enumerate(record.get("annotations", [])):
            what = f"annotation {k}"

            def problem(message, error=True):
                problems.append(Problem(file_name, f"{what}: {message}", image=file_name, error=error))

            if "bbox" not in ann:
                problem("no 'bbox'")
                continue
            x0, y0, x1, y1 = BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYXY_ABS),
                                             BoxMode.XYXY_ABS)
            if x1 < x0 or y1 < y0:
                problem(f"box reversed: {'x1 < x0' if x1 < x0 else 'y1 < y0'} in {list(ann['bbox'])}")
                continue
            if thing_classes is not None and not 0 <= ann.get("category_id", -1) < len(thing_classes):
                problem(f"category_id {ann.get('category_id')!r} is not in 0..{len(thing_classes) - 1}")
            if "width" in record and "height" in record:
                found = box_problem([x0, y0, x1, y1], record["width"], record["height"])
                if found:
                    problem(found[0], error=found[1])
    return problems


def _duplicate_problems(records):
    problems = []
    for key, what in (("file_name", "image file"), ("image_id", "image id")):
        counts = Counter(r.get(key) for r in records)
        for r in records:
            if counts[r.get(key)] > 1:
                problems.append(Problem(r["file_name"], f"{what} {r.get(key)!r} appears {counts[r.get(key)]} times "
                                        "in the dataset", image=r["file_name"]))
    return problems


def _object_count_problems(report):
    """Warnings: a declared class without any object, and far fewer objects than images."""
    problems = []
    source = dataset_source(report.name)
    classes = MetadataCatalog.get(report.name).get("thing_classes", None)
    if classes and report.records:
        counts = Counter(a.get("category_id") for r in report.records for a in r.get("annotations", [])
                         if not a.get("iscrowd", 0))
        for k, class_name in enumerate(classes):
            if not counts[k]:
                problems.append(Problem(source, f"class {class_name!r} (class {k}) has no object in dataset "
                                        f"{report.name!r}: training never sees it, and the evaluation leaves it "
                                        "out of the mean AP", error=False))
    images, objects = len(report.records), report.num_objects
    if images and objects < SPARSE_OBJECTS_PER_IMAGE * images:
        problems.append(Problem(source, f"dataset {report.name!r} has {objects} object(s) for {images} image(s) "
                                f"(under {SPARSE_OBJECTS_PER_IMAGE:g} per image): are the annotations all there?",
                                error=False))
    return problems


def _image_problems(records, name, progress, full_decode=False):
    """
    Every image's header and end read once (with `full_decode`, every image decoded): missing, unreadable,
    truncated, or not the size its annotation gives; warnings for what the decoder changes.
    """
    problems = []
    for record in tqdm(records, desc=f"Checking {name}", unit="img", disable=not progress, mininterval=1.0):
        path = record["file_name"]
        try:
            size, notes = inspect_image(path, full_decode)
        except FileNotFoundError:
            problems.append(Problem(path, "image file not found", image=path))
            continue
        except OSError as e:
            problems.append(Problem(path, str(e), image=path))
            continue
        problems += [Problem(path, note, image=path, error=False) for note in notes]
        expected = (record.get("width", size[0]), record.get("height", size[1]))
        if size != expected:
            problems.append(Problem(path, f"the annotation gives {expected[0]} x {expected[1]} (width x height), "
                                    f"the image is {size[0]} x {size[1]}", image=path))
    return problems
