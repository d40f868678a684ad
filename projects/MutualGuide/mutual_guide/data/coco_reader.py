"""
Our reader of COCO-json detection files, for training and for the images of the evaluation.

It gives the records and metadata detectron2's `load_coco_json` gives for boxes (categories sorted by id and
mapped to contiguous ids, images sorted by id, boxes in XYWH_ABS), with the json parsed once and every
problem collected instead of merged or deferred: `load_coco_json` attaches the boxes of two images sharing an
`id` to one of them, keeps an annotation without `bbox` until the mapper fails on it, trains on background
only when "annotations" is missing, and raises a bare KeyError without "categories".
"""
import json
import math
import os
from collections import Counter, defaultdict

from detectron2.structures import BoxMode

from mutual_guide.data.image_header import read_image_size
from mutual_guide.data.problems import Problem, box_problem

__all__ = ["read_coco_dataset"]


def read_coco_dataset(json_file, image_root):
    """
    Returns (records, problems, metadata) with metadata = {"thing_classes", "thing_dataset_id_to_contiguous_id"}
    (empty when the file cannot be used at all). Images with an error have no record.
    """
    data, problems = _load(json_file)
    if data is None:
        return [], problems, {}
    categories = data["categories"]
    cat_ids = sorted(c["id"] for c in categories)
    id_map = {cat_id: i for i, cat_id in enumerate(cat_ids)}
    metadata = {
        "thing_classes": [c["name"] for c in sorted(categories, key=lambda c: c["id"])],
        "thing_dataset_id_to_contiguous_id": id_map,
    }

    images, duplicated, image_problems = _images(data["images"], json_file, image_root)
    problems += image_problems
    annotations, annotation_problems = _annotations(
        data["annotations"], json_file, image_root, images, duplicated, id_map
    )
    problems += annotation_problems

    bad = {p.image for p in problems if p.error}
    records = []
    for image_id, image in images.items():
        file_name = os.path.join(image_root, image["file_name"])
        if file_name in bad:
            continue
        width, height = image.get("width"), image.get("height")
        if not _positive(width) or not _positive(height):
            try:  # tolerant: width/height missing from the json; the image knows them
                width, height = read_image_size(file_name)
            except OSError as e:
                problems.append(Problem(file_name, f"no width/height in {json_file} and {e}", image=file_name))
                continue
        records.append(
            {"file_name": file_name, "height": height, "width": width, "image_id": image_id,
             "annotations": annotations.get(image_id, [])}
        )
    return records, problems, metadata


def _load(json_file):
    """(the parsed json, problems); None when the file cannot be used at all."""

    def fatal(message):
        return None, [Problem(json_file, message, fatal=True)]

    try:
        with open(json_file, "rb") as f:
            data = json.load(f)
    except OSError as e:
        return fatal(f"cannot read the annotation file: {e}")
    except json.JSONDecodeError as e:
        return fatal(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}")
    except UnicodeDecodeError as e:
        return fatal(f"not a JSON text file: {e}")
    if not isinstance(data, dict):
        return fatal(f"the top level is a {type(data).__name__}, expected an object with images, annotations, categories")
    for key, why in (
        ("images", ""),
        ("annotations", " (without it every image would train as background)"),
        ("categories", " (class names and ids come from it)"),
    ):
        if not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            return fatal(f"{key!r} is {found}, expected a list{why}")
    categories = data["categories"]
    if not categories:
        return fatal("'categories' is empty")
    for k, c in enumerate(categories):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            return fatal(f"category {k} ({c!r}) needs an integer 'id' and a string 'name'")
    duplicated = [i for i, n in Counter(c["id"] for c in categories).items() if n > 1]
    if duplicated:
        return fatal(f"category id(s) {duplicated} appear more than once in 'categories'")
    return data, []


def _images(entries, json_file, image_root):
    """({image id: image entry} sorted by id, without the entries in error; the duplicated ids; problems)."""
    problems, by_id = [], defaultdict(list)
    for k, image in enumerate(entries):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            problems.append(Problem(json_file, f"images[{k}] ({image!r:.80}) needs an 'id' and a 'file_name'"))
            continue
        by_id[image["id"]].append(image)
    names = Counter(image["file_name"] for found in by_id.values() for image in found)
    images = {}
    for image_id, found in by_id.items():
        for image in found:
            file_name = os.path.join(image_root, image["file_name"])
            if len(found) > 1:
                others = ", ".join(i["file_name"] for i in found if i is not image)
                problems.append(Problem(json_file, f"image {image['file_name']!r} has the id {image_id!r} of "
                                        f"other image(s) too: {others}", image=file_name))
            if names[image["file_name"]] > 1:
                problems.append(Problem(json_file, f"file_name {image['file_name']!r} is used by "
                                        f"{names[image['file_name']]} images", image=file_name))
        if len(found) == 1:
            images[image_id] = found[0]
    duplicated = {image_id for image_id, found in by_id.items() if len(found) > 1}
    try:
        return dict(sorted(images.items())), duplicated, problems
    except TypeError:  # ids of mixed types cannot be sorted: keep the file's order
        return images, duplicated, problems


def _annotations(entries, json_file, image_root, images, duplicated, id_map):
    """{image id: [annotation dicts]} of the valid annotations, and the problems of the others."""
    problems, per_image = [], defaultdict(list)
    ann_ids = Counter(a.get("id") for a in entries if isinstance(a, dict) and "id" in a)
    for k, ann in enumerate(entries):
        if not isinstance(ann, dict) or "image_id" not in ann:
            problems.append(Problem(json_file, f"annotations[{k}] ({ann!r:.80}) has no 'image_id'"))
            continue
        what = f"annotation {ann.get('id', f'[{k}]')!r} of image id {ann['image_id']!r}"
        image = images.get(ann["image_id"])
        if image is None:
            if ann["image_id"] not in duplicated:  # those images are reported already
                problems.append(Problem(json_file, f"{what}: no image has this id in 'images'"))
            continue
        path = os.path.join(image_root, image["file_name"])

        def problem(message, error=True):
            problems.append(Problem(json_file, f"{what} ({image['file_name']}): {message}", image=path, error=error))

        if "id" not in ann:
            problem("no 'id' (the COCO evaluation indexes annotations by it)")
        elif ann_ids[ann["id"]] > 1:
            problem(f"annotation id {ann['id']!r} is used {ann_ids[ann['id']]} times (the COCO evaluation "
                    "would score one of them twice)")
        if "bbox" not in ann:
            problem("no 'bbox'")
            continue
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
            problem(f"'bbox' is {bbox!r:.60}, expected [x, y, width, height]")
            continue
        if ann.get("category_id") not in id_map:
            problem(f"category_id {ann.get('category_id')!r} is not in 'categories' (ids {sorted(id_map)})")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            problem(f"box reversed: negative {'width' if w < 0 else 'height'} in bbox {bbox}")
            continue
        if _positive(image.get("width")) and _positive(image.get("height")):
            found = box_problem([x, y, x + w, y + h], image["width"], image["height"])
            if found:
                problem(found[0], error=found[1])
        obj = {"iscrowd": ann.get("iscrowd", 0), "bbox": [x, y, w, h], "category_id": id_map[ann["category_id"]],
               "bbox_mode": BoxMode.XYWH_ABS}
        if "area" in ann:
            obj["area"] = ann["area"]
        per_image[ann["image_id"]].append(obj)
    return per_image, problems


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v):
    return _finite(v) and v > 0
