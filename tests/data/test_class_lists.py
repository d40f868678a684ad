"""
Every dataset of a run lists the same classes in the same order, or the run stops before training naming both
datasets and both lists: a test set listing the training classes in another order would score each class
against another one's objects (measured: AP50 0.46 -> 0.14, silently).
"""
import json
import os
import uuid

import pytest

from detectron2.config import get_cfg

from mutual_guide import add_mutual_guide_config
from mutual_guide.data.custom import register_custom_dataset
from mutual_guide.data.loading import check_datasets
from mutual_guide.data.problems import DatasetError


@pytest.fixture
def shapes_folder(tmp_path, write_voc, voc_object):
    """A VOC folder with a circle and a square in each of two images."""
    objects = [voc_object("circle", (2, 2, 20, 20)), voc_object("square", (30, 20, 50, 40))]
    return write_voc(tmp_path / "voc", {"a": objects, "b": objects})


def _voc(root, classes):
    name = f"cl{uuid.uuid4().hex[:8]}"
    register_custom_dataset(f"{name}:voc:root={root};split=train;classes={classes}")
    return name


def _coco(root, tmp_path, categories):
    """The same two images as a COCO json whose categories are `categories` ({id: name})."""
    ids = {n: i for i, n in categories.items()}
    data = {
        "images": [{"id": k, "file_name": f"{s}.jpg", "width": 64, "height": 48} for k, s in enumerate("ab")],
        "annotations": [{"id": 2 * k + j, "image_id": k, "category_id": ids[c], "bbox": box}
                        for k in range(2) for j, (c, box) in enumerate((("circle", [1, 1, 19, 19]),
                                                                         ("square", [29, 19, 21, 21])))],
        "categories": [{"id": i, "name": n} for i, n in categories.items()],
    }
    path = str(tmp_path / f"coco{uuid.uuid4().hex[:6]}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    name = f"cc{uuid.uuid4().hex[:8]}"
    register_custom_dataset(f"{name}:coco:json={path};images={os.path.join(root, 'JPEGImages')}")
    return name, path


def _cfg(tmp_path, train, test):
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    return cfg


def test_voc_classes_in_another_order_stop_the_run(tmp_path, shapes_folder):
    train, test = _voc(shapes_folder, "circle,square"), _voc(shapes_folder, "square,circle")
    split_file = os.path.join(shapes_folder, "ImageSets", "Main", "train.txt")
    with pytest.raises(DatasetError) as e:
        check_datasets(_cfg(tmp_path, [train], [test]), [train, test])
    assert str(e.value).startswith(f"Datasets '{train}' and '{test}' list the same classes in another order; "
                                   "names and order must be identical")
    assert f"DATASETS.TRAIN '{train}' ({split_file}): 2 classes ['circle', 'square']" in str(e.value)
    assert f"DATASETS.TEST '{test}' ({split_file}): 2 classes ['square', 'circle']" in str(e.value)
    check_datasets(_cfg(tmp_path, [train], [train]), [train, train])  # the same lists pass


def test_coco_categories_in_another_order_stop_the_run(tmp_path, shapes_folder):
    train, _ = _coco(shapes_folder, tmp_path, {1: "circle", 2: "square"})
    test, test_json = _coco(shapes_folder, tmp_path, {1: "square", 2: "circle"})
    expected = (rf"(?s)'{train}' and '{test}' list the same classes in another order.*"
                rf"DATASETS.TEST '{test}' \({test_json}\): 2 classes \['square', 'circle'\]")
    with pytest.raises(DatasetError, match=expected):
        check_datasets(_cfg(tmp_path, [train], [test]), [train, test])
    # the same names under other ids, in the same order, are the same classes
    same, _ = _coco(shapes_folder, tmp_path, {7: "circle", 9: "square"})
    check_datasets(_cfg(tmp_path, [train], [same]), [train, same])
    # a VOC training set against a COCO test set: compared after the json is read
    voc = _voc(shapes_folder, "circle,square")
    with pytest.raises(DatasetError, match=rf"'{voc}' and '{test}' list the same classes in another order"):
        check_datasets(_cfg(tmp_path, [voc], [test]), [voc, test])


def test_eval_only_compares_the_test_sets(tmp_path, shapes_folder):
    first, second = _voc(shapes_folder, "circle,square"), _voc(shapes_folder, "circle,square,triangle")
    cfg = _cfg(tmp_path, [], [first, second])  # train_net.py --eval-only checks DATASETS.TEST alone
    with pytest.raises(DatasetError) as e:
        check_datasets(cfg, cfg.DATASETS.TEST)
    assert f"Datasets '{first}' and '{second}' list different classes" in str(e.value)
    assert f"DATASETS.TEST '{second}'" in str(e.value) and "3 classes ['circle', 'square', 'triangle']" in str(e.value)
