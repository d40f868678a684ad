"""
The faults of issue 9, each with the message it must now give: broken datasets, missing weights, runs that
would overwrite another, interrupted saves, bad config values. Small: 128 px, a handful of iterations.
"""
import json
import logging
import os
import re
import uuid

import cv2
import numpy as np
import pytest

import train_net
from conftest import ROOT
from detectron2.engine import default_argument_parser
from mutual_guide.data import make_synthetic_dataset
from mutual_guide.data.check import check_dataset
from mutual_guide.data.coco_reader import read_coco_dataset
from mutual_guide.data.loading import training_dataset_dicts
from mutual_guide.data.problems import DatasetError


def _shapes(root, fmt="coco", num_train=4, num_test=2):
    name = f"f{uuid.uuid4().hex[:8]}"
    return make_synthetic_dataset(str(root), fmt, num_train=num_train, num_test=num_test, image_size=128, seed=2,
                                  name=name)


def _edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.fixture
def captured():
    """Records of the project's loggers (detectron2's setup_logger stops them from reaching pytest)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("mutual_guide", "demo")]
    for logger in loggers:
        logger.addHandler(handler)
    yield lambda: "\n".join(r.getMessage() for r in records)
    for logger in loggers:
        logger.removeHandler(handler)


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
def test_coco_faults_name_the_file(tmp_path, case):
    info = _shapes(tmp_path)
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


def test_image_faults_are_found_before_training_and_skipped_on_request(tmp_path, train_args, captured):
    info = _shapes(tmp_path)
    images = info["splits"]["train"]["image_root"]
    os.remove(os.path.join(images, "train_00001.jpg"))
    with open(os.path.join(images, "train_00002.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    cv2.imwrite(os.path.join(images, "train_00003.jpg"), np.zeros((64, 128, 3), np.uint8))  # json says 128 x 128

    cfg = train_net.setup(train_args(info, tmp_path / "out", "SOLVER.MAX_ITER", 2))
    with pytest.raises(DatasetError) as err:
        train_net.Trainer(cfg)
    message = str(err.value)
    assert "1 usable image(s), 3 image(s) in error" in message
    assert re.search(r"train_00001.jpg: image file not found", message)
    assert re.search(r"train_00002.jpg: cannot read the image \(UnidentifiedImageError", message)
    assert "train_00003.jpg: the annotation gives 128 x 128 (width x height), the image is 128 x 64" in message
    assert "DATALOADER.SKIP_BAD_IMAGES True" in message
    assert not os.path.exists(tmp_path / "out" / "metrics.json")  # stopped before the first iteration
    assert os.listdir(tmp_path / "out" / "dataset_check") == [f"{info['custom_specs'][0].split(':')[0]}.txt"]

    cfg = train_net.setup(train_args(info, tmp_path / "skip", "SOLVER.MAX_ITER", 2, "DATALOADER.SKIP_BAD_IMAGES", True))
    assert [os.path.basename(d["file_name"]) for d in training_dataset_dicts(cfg)] == ["train_00000.jpg"]
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    log = captured()
    assert re.search(r"DATALOADER.SKIP_BAD_IMAGES: 3 image\(s\) of 'f\w+_train' left out for 3 error\(s\), 1 used", log)
    assert "train_00002.jpg: cannot read the image" in log
    assert os.path.isfile(tmp_path / "skip" / "model_final.pth")
