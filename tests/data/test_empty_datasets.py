"""
A training set without any object stops the run before training, naming the dataset and its file (a COCO json
whose 'annotations' list is empty used to train on background only, silently); far fewer objects than images
is a warning with the counts.
"""
import json
import os
import uuid

import pytest

from detectron2.config import get_cfg

from mutual_guide import add_mutual_guide_config
from mutual_guide.data.check import check_dataset
from mutual_guide.data.custom import register_custom_dataset
from mutual_guide.data.loading import check_datasets
from mutual_guide.data.problems import DatasetError


def _coco(tmp_path, write_voc, num_images, num_objects):
    """A COCO json over `num_images` images, the first `num_objects` of them holding one square each."""
    root = write_voc(tmp_path / "images", {f"i{k}": [] for k in range(num_images)})
    data = {
        "images": [{"id": k, "file_name": f"i{k}.jpg", "width": 64, "height": 48} for k in range(num_images)],
        "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": [2, 2, 20, 20]}
                        for k in range(num_objects)],
        "categories": [{"id": 1, "name": "square"}],
    }
    json_file = str(tmp_path / "instances.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    name = f"empty{uuid.uuid4().hex[:8]}"
    register_custom_dataset(f"{name}:coco:json={json_file};images={os.path.join(root, 'JPEGImages')}")
    return name, json_file


def _cfg(tmp_path, train, test):
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    return cfg


def test_a_training_set_without_objects_stops_the_run(tmp_path, write_voc):
    name, json_file = _coco(tmp_path, write_voc, num_images=3, num_objects=0)
    with pytest.raises(DatasetError) as e:
        check_datasets(_cfg(tmp_path, [name], []), [name])
    assert str(e.value).startswith(f"Dataset '{name}' (DATASETS.TRAIN, {json_file}): no object in its 3 usable "
                                   "image(s): training would learn background only.")
    # as a test set it is reported, not refused: the run has nothing to train on it
    check_datasets(_cfg(tmp_path, [], [name]), [name])
    warnings = [str(p) for p in check_dataset(name, progress=False).warnings]
    assert f"warning: {json_file}: dataset '{name}' has 0 object(s) for 3 image(s) (under 0.1 per image): are the " \
           "annotations all there?" in warnings


def test_a_voc_training_set_without_objects_stops_the_run(tmp_path, write_voc):
    root = write_voc(tmp_path, {"a": [], "b": []})
    name = f"emptyvoc{uuid.uuid4().hex[:8]}"
    register_custom_dataset(f"{name}:voc:root={root};split=train;classes=square")
    split_file = os.path.join(root, "ImageSets", "Main", "train.txt")
    with pytest.raises(DatasetError, match=rf"Dataset '{name}' \(DATASETS.TRAIN, {split_file}\): no object in "
                                           r"its 2 usable image\(s\)"):
        check_datasets(_cfg(tmp_path, [name], []), [name])


@pytest.mark.parametrize("num_objects,warned", [(1, True), (2, False)])
def test_far_fewer_objects_than_images_is_a_warning(tmp_path, write_voc, num_objects, warned):
    name, json_file = _coco(tmp_path, write_voc, num_images=20, num_objects=num_objects)
    check_datasets(_cfg(tmp_path, [name], []), [name])  # a warning does not stop the run
    message = f"dataset '{name}' has {num_objects} object(s) for 20 image(s) (under 0.1 per image)"
    assert any(message in str(p) and p.path == json_file for p in check_dataset(name, progress=False).warnings) \
        == warned
