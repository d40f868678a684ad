"""check_dataset: each fault of a COCO file with the message that names it, and datasets registered with
detectron2's own functions checked too."""
import json
import os
import re
import uuid

import pytest


from mutual_guide.data.check import check_dataset
from mutual_guide.data.coco_reader import read_coco_dataset


def _edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


# ----------------------------------------------------------------------------- COCO files, one fault each
_COCO_FAULTS = {  # case -> (edit of the json, message expected, images still usable out of 4; 0: fatal)
    "malformed json": (None, r"malformed JSON at line 1, column \d+", 0),
    "no annotations": (lambda d: d.pop("annotations"),
                       r"'annotations' is missing, expected a list \(without it every image would train as background\)",
                       0),
    "no categories": (lambda d: d.pop("categories"), r"'categories' is missing, expected a list", 0),
    "duplicated id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]),
                      r"image 'train_00001.jpg' has the id 1 of other image\(s\) too: train_00000.jpg", 2),
    "duplicated file": (lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"]),
                        r"file_name 'train_00000.jpg' is used by 2 images", 2),
    "no bbox": (lambda d: d["annotations"][0].pop("bbox"), r"annotation 1 of image id 1 \(train_00000.jpg\): no 'bbox'",
                3),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=9),
                         r"category_id 9 is not in 'categories' \(ids \[1, 2, 3\]\)", 3),
    "reversed box": (lambda d: d["annotations"][0]["bbox"].__setitem__(2, -5),
                     r"box reversed: negative width in bbox \[\d+, \d+, -5, \d+\]", 3),
}


@pytest.mark.parametrize("case", sorted(_COCO_FAULTS))
def test_coco_faults_name_the_file(tmp_path, case, shapes_dataset):
    info = shapes_dataset(tmp_path)
    json_file = info["splits"]["train"]["json_file"]
    edit, expected, usable = _COCO_FAULTS[case]
    if edit is None:
        with open(json_file, "a") as f:
            f.write("}")
    else:
        _edit_json(json_file, edit)
    records, problems, _ = read_coco_dataset(json_file, info["splits"]["train"]["image_root"])
    assert all(p.path == json_file and p.error for p in problems)
    assert any(re.search(expected, p.message) for p in problems), [p.message for p in problems]
    assert any(p.fatal for p in problems) == (usable == 0)
    assert len(records) == usable


def test_datasets_registered_with_detectrons_functions_are_checked_too(tmp_path, shapes_dataset):
    from detectron2.data.datasets import register_coco_instances

    info = shapes_dataset(tmp_path)
    split = info["splits"]["train"]
    _edit_json(split["json_file"], lambda d: d["annotations"][0]["bbox"].__setitem__(3, -4))
    os.remove(os.path.join(split["image_root"], "train_00003.jpg"))
    name = f"d2_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, split["json_file"], split["image_root"])
    with open(split["json_file"]) as f:
        x, y, w, h = json.load(f)["annotations"][0]["bbox"]
    report = check_dataset(name, progress=False)
    assert [(os.path.basename(p.image), p.message) for p in report.errors] == [
        ("train_00000.jpg", f"annotation 0: box reversed: y1 < y0 in [{x}, {y}, {w}, -4]"),
        ("train_00003.jpg", "image file not found"),
    ]
    assert len(report.records) == 2
