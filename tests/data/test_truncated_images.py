"""
A truncated image is an error of the dataset check, naming the file, so it stops the run before training (or is
left out with DATALOADER.SKIP_BAD_IMAGES) instead of failing at the iteration that draws it. JPEG and PNG are
checked from their last bytes (end-of-image marker, IEND chunk); other formats with DATALOADER.CHECK_FULL_DECODE.
"""
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg

from mutual_guide import add_mutual_guide_config
from mutual_guide.data.check import check_dataset, checked_records
from mutual_guide.data.custom import register_custom_dataset
from mutual_guide.data.image_io import inspect_image
from mutual_guide.data.loading import check_datasets
from mutual_guide.data.mapper import read_image_checked
from mutual_guide.data.problems import DatasetError


def _cut(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _voc(tmp_path, write_voc, voc_object, ext=".jpg", images=("a", "b", "c")):
    root = write_voc(tmp_path, {i: [voc_object("square", (2, 2, 30, 30))] for i in images}, ext=ext)
    name = f"trunc{uuid.uuid4().hex[:8]}"
    register_custom_dataset(f"{name}:voc:root={root};split=train;classes=square")
    return name, os.path.join(root, "JPEGImages")


def test_a_truncated_jpeg_is_an_error_naming_it(tmp_path, write_voc, voc_object):
    name, images = _voc(tmp_path, write_voc, voc_object)
    bad = os.path.join(images, "b.jpg")
    _cut(bad)
    # what training would meet at the iteration that draws it
    with pytest.raises(OSError, match="Cannot read image file .*b.jpg: OSError: image file is truncated"):
        read_image_checked(bad, "BGR")
    report = check_dataset(name, progress=False)
    assert [(p.path, p.error) for p in report.problems] == [(bad, True)]
    assert report.problems[0].message.startswith(
        "truncated: cannot decode the image (OSError: image file is truncated")
    assert report.bad_images == [bad] and len(report.records) == 2
    with pytest.raises(DatasetError, match=r"(?s)1 image\(s\) in error.*b\.jpg: truncated"):
        checked_records(name, skip_bad_images=False)
    assert [os.path.basename(r["file_name"]) for r in checked_records(name, skip_bad_images=True)] == ["a.jpg",
                                                                                                     "c.jpg"]


def test_a_truncated_png_is_an_error_naming_it(tmp_path, write_voc, voc_object):
    name, images = _voc(tmp_path, write_voc, voc_object, ext=".png")
    _cut(os.path.join(images, "c.png"), keep=0.9)
    report = check_dataset(name, progress=False)
    assert [os.path.basename(p.path) for p in report.errors] == ["c.png"]
    assert "truncated: cannot decode the image" in report.errors[0].message


def test_complete_files_with_padding_or_appended_data_pass(tmp_path):
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (48, 64, 3)).astype(np.uint8))
    for suffix, tail in (("zeros", b"\0" * 10000), ("trailer", b"MOTION-PHOTO" + b"\1" * 5000)):
        path = str(tmp_path / f"{suffix}.jpg")
        image.save(path)
        with open(path, "ab") as f:
            f.write(tail)  # zero padding, or data after FF D9 (some cameras append a video)
        assert inspect_image(path) == ((64, 48), [])
    # the end marker is all that differs: a JPEG cut just before its last two bytes is refused
    path = str(tmp_path / "cut.jpg")
    image.save(path)
    data = open(path, "rb").read()
    assert data.endswith(b"\xff\xd9")
    with open(path, "wb") as f:
        f.write(data[:-2])
    with pytest.raises(OSError, match="truncated"):
        inspect_image(path)


def test_other_formats_need_the_full_decode(tmp_path, write_voc, voc_object):
    name, images = _voc(tmp_path, write_voc, voc_object, ext=".bmp")
    _cut(os.path.join(images, "a.bmp"))
    assert check_dataset(name, progress=False).errors == []  # a BMP has no end marker: the header is all read
    decoded = f"decoded{uuid.uuid4().hex[:8]}"  # the same folder, checked afresh under another name
    register_custom_dataset(f"{decoded}:voc:root={tmp_path};split=train;classes=square")
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (decoded,), ()
    assert cfg.DATALOADER.CHECK_FULL_DECODE is False
    cfg.DATALOADER.CHECK_FULL_DECODE = True
    with pytest.raises(DatasetError, match=r"(?s)a\.bmp: cannot decode the image \(OSError: image file is truncated"):
        check_datasets(cfg, [decoded])
