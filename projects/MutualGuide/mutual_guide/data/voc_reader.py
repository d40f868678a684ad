"""
Our reader of VOC-layout folders, used for training and evaluation alike (detectron2's `load_voc_instances`
and `PascalVOCDetectionEvaluator` read the same XML with int() and fail on fields the format leaves optional).

    <root>/ImageSets/Main/<split>.txt   one image id a line (a one-line file and extra columns are fine)
    <root>/Annotations/<id>.xml         <size> is used when present, otherwise the image header is read
    <root>/JPEGImages/<id>.<ext>        .jpg preferred, then any of IMAGE_EXTENSIONS, then the XML's <filename>

Tolerant where the format is: float coordinates, missing <pose>/<truncated>/<difficult>, other extensions.
Strict where it must be: malformed XML, a class not in the list, an object without <name> or <bndbox>, a
coordinate that is not a number, a reversed box. Every problem names its file (see problems.py).

Records keep detectron2's box convention: the XML's 1-based inclusive (xmin, ymin, xmax, ymax) becomes
(xmin - 1, ymin - 1, xmax, ymax) in XYXY_ABS, as `load_voc_instances` gives; box_convention.py converts
to the paper's convention. Each annotation also keeps `difficult` (0 or 1) for the evaluation.
"""
import math
import os
import xml.etree.ElementTree as ET

from detectron2.structures import BoxMode

from mutual_guide.data.image_header import IMAGE_EXTENSIONS, read_image_size
from mutual_guide.data.problems import Problem, box_problem

__all__ = ["read_voc_dataset", "read_voc_split"]

_COORDINATES = ("xmin", "ymin", "xmax", "ymax")


def read_voc_split(split_file):
    """Image ids of a split file: the first word of every non-empty line. Returns (ids, problems)."""
    try:
        with open(split_file) as f:
            ids = [line.split()[0] for line in f if line.strip()]
    except OSError as e:
        return [], [Problem(split_file, f"cannot read the split file: {e}", fatal=True)]
    except UnicodeDecodeError as e:
        return [], [Problem(split_file, f"not a text file: {e}", fatal=True)]
    if not ids:
        return [], [Problem(split_file, "the split file lists no image id", fatal=True)]
    return ids, []


def read_voc_dataset(dirname, split, class_names):
    """
    Records of `split` in the VOC folder `dirname` with classes `class_names` (in label order).
    Returns (records, problems): images with an error have no record; warnings leave the record.
    """
    ids, problems = read_voc_split(os.path.join(dirname, "ImageSets", "Main", split + ".txt"))
    image_dir = os.path.join(dirname, "JPEGImages")
    images = _index_images(image_dir)
    class_ids = {name: i for i, name in enumerate(class_names)}
    records = []
    for image_id in ids:
        record, found = _read_one(dirname, image_id, images, class_ids, class_names)
        problems.extend(found)
        if not any(p.error for p in found):
            records.append(record)
    return records, problems


def _index_images(image_dir):
    """{stem: [file names]} of the image folder, listed once (a stat per image would be slower)."""
    index = {}
    try:
        names = sorted(os.listdir(image_dir))
    except OSError:
        return index
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext in IMAGE_EXTENSIONS or ext.lower() in IMAGE_EXTENSIONS:
            index.setdefault(stem, []).append(name)
    for stem, found in index.items():
        found.sort(key=lambda n: _extension_rank(os.path.splitext(n)[1]))
    return index


def _extension_rank(ext):
    return IMAGE_EXTENSIONS.index(ext) if ext in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS)


def _read_one(dirname, image_id, images, class_ids, class_names):
    """(record or None, problems) of one image id."""
    xml_file = os.path.join(dirname, "Annotations", image_id + ".xml")
    image_dir = os.path.join(dirname, "JPEGImages")
    problems = []
    root, unreadable = None, None
    try:
        root = ET.parse(xml_file).getroot()
    except FileNotFoundError:
        unreadable = f"annotation file of image id {image_id!r} (listed in the split file) not found"
    except ET.ParseError as e:
        unreadable = f"malformed XML: {e}"
    except OSError as e:
        unreadable = f"cannot read the annotation file: {e}"

    candidates = images.get(image_id, [])
    if not candidates and root is not None and (root.findtext("filename") or "").strip():
        named = os.path.basename(root.findtext("filename").strip())
        candidates = [named] if os.path.isfile(os.path.join(image_dir, named)) else []
    image_file = os.path.join(image_dir, candidates[0] if candidates else image_id + ".jpg")

    def problem(path, message, error=True):
        problems.append(Problem(path, message, image=image_file, error=error))

    if root is None:
        problem(xml_file, unreadable)
        return None, problems
    if not candidates:
        tried = ", ".join(IMAGE_EXTENSIONS[:7])
        problem(image_file, f"image of id {image_id!r} not found in {image_dir} (looked for {tried})")

    width, height = _positive_int(root.findtext("size/width")), _positive_int(root.findtext("size/height"))
    if (width is None or height is None) and candidates:
        try:
            width, height = read_image_size(image_file)
        except OSError as e:
            problem(image_file, f"no <size> in {xml_file} and the image cannot be read: {e}")
    record = {"file_name": image_file, "image_id": image_id, "height": height, "width": width}

    annotations = []
    for k, obj in enumerate(root.findall("object")):
        annotation, message, is_error = _read_object(k, obj, class_ids, class_names, width, height)
        if message:
            problem(xml_file, message, error=is_error)
        if annotation is not None:
            annotations.append(annotation)
    record["annotations"] = annotations
    return record, problems


def _read_object(k, obj, class_ids, class_names, width, height):
    """(annotation or None, problem message or None, whether the problem is an error) of the k-th <object>."""
    name = (obj.findtext("name") or "").strip()
    what = f"object {k} ({name!r})"
    if not name:
        return None, f"object {k} has no <name>", True
    if name not in class_ids:
        return None, f"{what}: class {name!r} is not in classes= ({', '.join(class_names)})", True
    difficult = _number(obj.findtext("difficult"), default=0)
    if difficult not in (0, 1):
        return None, f"{what}: <difficult> is {obj.findtext('difficult')!r}, expected 0 or 1", True
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return None, f"{what} has no <bndbox>", True
    values = [_number(bndbox.findtext(key)) for key in _COORDINATES]
    bad = [key for key, v in zip(_COORDINATES, values) if v is None]
    if bad:
        texts = ", ".join(f"<{key}> {bndbox.findtext(key)!r}" for key in bad)
        return None, f"{what}: {texts} (missing or not a number)", True
    xmin, ymin, xmax, ymax = values
    if xmin > xmax or ymin > ymax:
        low, high = ("xmin", "xmax") if xmin > xmax else ("ymin", "ymax")
        lo, hi = (xmin, xmax) if xmin > xmax else (ymin, ymax)
        return None, f"{what}: box reversed: {low} {lo:g} > {high} {hi:g}", True
    box = [xmin - 1.0, ymin - 1.0, xmax, ymax]  # detectron2's convention (load_voc_instances)
    annotation = {"category_id": class_ids[name], "bbox": box, "bbox_mode": BoxMode.XYXY_ABS,
                  "difficult": int(difficult)}
    found = box_problem(box, width, height) if width is not None and height is not None else None
    if found:
        return (None if found[1] else annotation), f"{what}: {found[0]}", found[1]
    return annotation, None, False


def _number(text, default=None):
    """float of a text field (None when missing, empty or not a finite number); `default` when missing."""
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _positive_int(text):
    """A <size> field: None when missing, not a number or not positive (some tools write 0 when unknown)."""
    value = _number(text)
    return int(value) if value is not None and value > 0 else None
