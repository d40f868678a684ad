"""Dataset mapper, dataset registration (builtin, DATASETS.CUSTOM) and the synthetic dataset."""
import json
import os
import uuid

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from mutual_guide import add_mutual_guide_config
from mutual_guide.data import (
    MutualGuideDatasetMapper,
    check_dataset_paths,
    make_synthetic_dataset,
    register_custom_datasets,
)
from mutual_guide.data.builtin import VOC_CLASS_NAMES
from mutual_guide.data.custom import parse_custom_spec


def _cfg(size=64, augment=True, custom=()):
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.INPUT.SIZE = size
    cfg.INPUT.MG_AUGMENT = augment
    cfg.DATASETS.CUSTOM = list(custom)
    return cfg


def _name(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    kwargs = dict(num_train=24, num_test=6, image_size=96, seed=0)
    return {
        "coco": make_synthetic_dataset(str(root / "coco"), "coco", **kwargs),
        "voc": make_synthetic_dataset(str(root / "voc"), "voc", **kwargs),
    }


def _write_image(path, h, w, seed=0):
    cv2.imwrite(str(path), np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8))
    return str(path)


def _dict(file_name, h, w, boxes=(), classes=None):
    classes = classes if classes is not None else [0] * len(boxes)
    return {
        "file_name": file_name,
        "image_id": 7,
        "height": h,
        "width": w,
        "annotations": [
            {"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": c} for b, c in zip(boxes, classes)
        ],
    }


# ----------------------------------------------------------------------------- mapper
def test_mapper_train_output(tmp_path):
    d = _dict(_write_image(tmp_path / "a.png", 50, 80), 50, 80, [[10, 5, 60, 45], [40, 10, 78, 30]], [2, 0])
    np.random.seed(0)
    out = MutualGuideDatasetMapper(_cfg(64), is_train=True)(d)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"], out["image_id"]) == (50, 80, 7)
    assert out["file_name"] == d["file_name"] and "annotations" not in out
    inst = out["instances"]
    assert inst.image_size == (64, 64) and len(inst) >= 1
    assert inst.gt_classes.dtype == torch.int64 and set(inst.gt_classes.tolist()) <= {0, 2}
    assert (inst.gt_boxes.tensor >= 0).all() and (inst.gt_boxes.tensor <= 64).all()
    assert "annotations" in d  # the input dict is left alone


def test_mapper_resize_only_boxes_and_test_image(tmp_path):
    d = _dict(_write_image(tmp_path / "a.png", 50, 80), 50, 80, [[10, 5, 60, 45]], [1])
    out = MutualGuideDatasetMapper(_cfg(64, augment=False), is_train=True)(d)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor, [[8.0, 6.4, 48.0, 57.6]], rtol=1e-6)
    assert out["instances"].gt_classes.tolist() == [1]

    test_out = MutualGuideDatasetMapper(_cfg(64), is_train=False)(d)
    assert "instances" not in test_out and "annotations" not in test_out
    expected = cv2.resize(cv2.imread(d["file_name"]), (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(test_out["image"].permute(1, 2, 0).numpy(), expected)  # BGR
    assert (test_out["height"], test_out["width"]) == (50, 80)


def test_mapper_deterministic_under_seed(tmp_path):
    d = _dict(_write_image(tmp_path / "a.png", 50, 80), 50, 80, [[10, 5, 60, 45], [40, 10, 78, 30]])
    mapper = MutualGuideDatasetMapper(_cfg(64), is_train=True)
    outs = []
    for seed in (5, 5):
        np.random.seed(seed)
        outs.append(mapper(d))
    assert torch.equal(outs[0]["image"], outs[1]["image"])
    assert torch.equal(outs[0]["instances"].gt_boxes.tensor, outs[1]["instances"].gt_boxes.tensor)


@pytest.mark.parametrize("augment", [True, False])
def test_mapper_image_without_objects(tmp_path, augment):
    d = _dict(_write_image(tmp_path / "a.png", 30, 40), 30, 40)
    np.random.seed(0)
    inst = MutualGuideDatasetMapper(_cfg(64, augment=augment), is_train=True)(d)["instances"]
    assert len(inst) == 0 and inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_classes.dtype == torch.int64


def test_mapper_clips_out_of_image_and_drops_empty_boxes(tmp_path):
    boxes = [[-10, -5, 20, 30], [30, 10, 60, 40], [25, 25, 25, 28], [50, 10, 70, 20], [10, 10, 5, 5]]
    d = _dict(_write_image(tmp_path / "a.png", 32, 40), 32, 40, boxes, [0, 1, 2, 3, 4])
    mapper = MutualGuideDatasetMapper(_cfg(64, augment=False), is_train=True)
    inst = mapper(d)["instances"]
    # kept: the first clipped to (0, 0, 20, 30), the second clipped to x2 = 40; scaled by 64/40 and 64/32
    assert inst.gt_classes.tolist() == [0, 1]
    np.testing.assert_allclose(inst.gt_boxes.tensor, [[0, 0, 32, 60], [48, 20, 64, 64]])
    assert mapper.num_dropped_empty == 3  # zero width, fully outside, inverted


def test_mapper_drops_boxes_under_min_side(tmp_path):
    d = _dict(_write_image(tmp_path / "a.png", 100, 100), 100, 100, [[10, 10, 10.9, 50], [10, 10, 11.1, 50]], [0, 1])
    inst = MutualGuideDatasetMapper(_cfg(64, augment=False), is_train=True)(d)["instances"]
    assert inst.gt_classes.tolist() == [1]


def test_mapper_falls_back_to_resize_when_augmentation_loses_every_object(tmp_path):
    from detectron2.data.transforms import CropTransform

    from mutual_guide.data.augmentation import RandomInterpolationResize

    d = _dict(_write_image(tmp_path / "a.png", 80, 80), 80, 80, [[40, 40, 60, 60]], [2])
    mapper = MutualGuideDatasetMapper(
        is_train=True,
        augmentations=[CropTransform(0, 0, 20, 20), RandomInterpolationResize(64)],  # crops the object away
        image_format="BGR",
        min_box_side_ratio=0.01,
        size=64,
    )
    inst = mapper(d)["instances"]
    assert inst.gt_classes.tolist() == [2]
    np.testing.assert_allclose(inst.gt_boxes.tensor, [[32, 32, 48, 48]])


def test_mapper_unreadable_and_missing_image_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    mapper = MutualGuideDatasetMapper(_cfg(64), is_train=True)
    with pytest.raises(OSError, match="broken.jpg"):
        mapper(_dict(str(bad), 10, 10))
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        mapper(_dict(str(tmp_path / "nowhere.jpg"), 10, 10))


# ----------------------------------------------------------------------------- real VOC images
def test_voc_mini_through_custom_spec_and_mapper(voc_mini_root):
    name = _name("voc_mini")
    spec = f"{name}:voc:root={voc_mini_root};split=trainval;classes={','.join(VOC_CLASS_NAMES)};year=2007"
    register_custom_datasets(_cfg(custom=[spec]))
    meta = MetadataCatalog.get(name)
    assert (meta.year, meta.split, meta.evaluator_type, len(meta.thing_classes)) == (2007, "trainval", "pascal_voc", 20)
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    assert sorted(dicts) == ["000001", "000002"]
    first = dicts["000001"]
    assert (first["height"], first["width"]) == (500, 353)
    assert [a["category_id"] for a in first["annotations"]] == [11, 14]  # dog, person
    np.testing.assert_array_equal([a["bbox"] for a in first["annotations"]], [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert [a["bbox"] for a in dicts["000002"]["annotations"]] == [[138, 199, 207, 301]]  # train

    out = MutualGuideDatasetMapper(_cfg(320, augment=False), is_train=True)(first)
    assert out["image"].shape == (3, 320, 320) and (out["height"], out["width"]) == (500, 353)
    np.testing.assert_allclose(
        out["instances"].gt_boxes.tensor[0],
        [47 * 320 / 353, 239 * 320 / 500, 195 * 320 / 353, 371 * 320 / 500],
        rtol=1e-5,
    )
    np.random.seed(0)
    for d in dicts.values():
        inst = MutualGuideDatasetMapper(_cfg(320), is_train=True)(d)["instances"]
        assert len(inst) >= 1 and (inst.gt_boxes.tensor <= 320).all()


# ----------------------------------------------------------------------------- custom registration
def test_custom_coco_and_voc_specs_load_the_same_synthetic_data(synthetic):
    names = {fmt: _name(f"syn_{fmt}") for fmt in ("coco", "voc")}
    specs = [synthetic[fmt]["custom_specs"][0].replace("synthetic_train", names[fmt]) for fmt in ("coco", "voc")]
    assert register_custom_datasets(_cfg(custom=specs)) == [names["coco"], names["voc"]]
    assert register_custom_datasets(_cfg(custom=specs)) == [names["coco"], names["voc"]]  # idempotent

    coco = sorted(DatasetCatalog.get(names["coco"]), key=lambda d: d["file_name"])
    voc = sorted(DatasetCatalog.get(names["voc"]), key=lambda d: d["file_name"])
    assert len(coco) == len(voc) == 24
    assert MetadataCatalog.get(names["coco"]).thing_classes == ["circle", "square", "triangle"]
    assert MetadataCatalog.get(names["coco"]).evaluator_type == "coco"
    assert MetadataCatalog.get(names["voc"]).thing_classes == ["circle", "square", "triangle"]
    assert MetadataCatalog.get(names["voc"]).year == 2012
    for c, v in zip(coco, voc):
        assert os.path.basename(c["file_name"]) == os.path.basename(v["file_name"])
        c_boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in c["annotations"]]
        v_boxes = [a["bbox"] for a in v["annotations"]]
        np.testing.assert_allclose(np.array(c_boxes).reshape(-1, 4), np.array(v_boxes).reshape(-1, 4))
        assert [a["category_id"] for a in c["annotations"]] == [a["category_id"] for a in v["annotations"]]


def test_custom_same_name_other_spec_is_refused(synthetic):
    name = _name("syn")
    spec = synthetic["coco"]["custom_specs"][0].replace("synthetic_train", name)
    register_custom_datasets(_cfg(custom=[spec]))
    with pytest.raises(ValueError, match="already registered"):
        register_custom_datasets(_cfg(custom=[spec.replace("train.json", "test.json")]))


@pytest.mark.parametrize(
    "entry",
    [
        "no_format_here",
        "x:yolo:root=/a",
        ":voc:root=/a;split=train;classes=a",
        "x:voc:root=/a;split=train",  # no classes
        "x:voc:root=/a;split=train;classes=a;colour=red",  # unknown key
        "x:voc:root=/a;split;classes=a",  # not key=value
        "x:voc:root=/a;split=train;classes=a,,b",
        "x:voc:root=/a;split=train;classes=a;year=twenty",
        "x:coco:json=/a.json",  # no images
    ],
)
def test_malformed_spec_names_the_entry(entry):
    with pytest.raises(ValueError) as err:
        parse_custom_spec(entry)
    assert repr(entry) in str(err.value) and "expected" in str(err.value)


def test_parse_spec():
    name, fmt, opts = parse_custom_spec("d:voc:root=/r; split=val ;classes=cat, dog;year=2007")
    assert (name, fmt, opts) == ("d", "voc", {"root": "/r", "split": "val", "classes": ["cat", "dog"], "year": 2007})


def test_missing_paths_name_the_key_and_path(tmp_path, synthetic):
    missing = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=f"root=.*{missing}"):
        register_custom_datasets(_cfg(custom=[f"{_name('m')}:voc:root={missing};split=train;classes=a"]))
    voc_root = synthetic["voc"]["root"]
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt"):
        register_custom_datasets(_cfg(custom=[f"{_name('m')}:voc:root={voc_root};split=val;classes=a"]))
    json_file = synthetic["coco"]["splits"]["train"]["json_file"]
    with pytest.raises(FileNotFoundError, match=f"images=.*{missing}"):
        register_custom_datasets(_cfg(custom=[f"{_name('m')}:coco:json={json_file};images={missing}"]))


# ----------------------------------------------------------------------------- builtin datasets
def test_builtin_datasets_registered_lazily_and_missing_folder_named(tmp_path, monkeypatch):
    builtin = ["mg_voc_2007_trainval", "mg_voc_2012_trainval", "mg_voc_2007_test", "mg_coco_2017_train"]
    assert set(builtin + ["mg_coco_2017_val"]) <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("mg_voc_2007_test")
    assert (meta.year, meta.split, meta.evaluator_type) == (2007, "test", "pascal_voc")
    assert MetadataCatalog.get("mg_coco_2017_val").evaluator_type == "coco"
    if os.path.isabs(meta.dirname):
        pytest.skip("DETECTRON2_DATASETS is absolute here; the relative default cannot be made to miss")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2007.*DETECTRON2_DATASETS"):
        DatasetCatalog.get("mg_voc_2007_test")
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json"):
        check_dataset_paths(["mg_coco_2017_val"])


# ----------------------------------------------------------------------------- synthetic dataset
def test_synthetic_is_deterministic_and_learnable(tmp_path):
    a = make_synthetic_dataset(str(tmp_path / "a"), "coco", num_train=40, num_test=2, image_size=96, seed=1)
    b = make_synthetic_dataset(str(tmp_path / "b"), "coco", num_train=40, num_test=2, image_size=96, seed=1)
    c = make_synthetic_dataset(str(tmp_path / "c"), "coco", num_train=40, num_test=2, image_size=96, seed=2)
    load = lambda info: json.load(open(info["splits"]["train"]["json_file"]))  # noqa: E731
    assert load(a) == load(b) and load(a) != load(c)
    for i in (0, 17):
        name = f"train_{i:05d}.jpg"
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()

    data = load(a)
    per_image = np.bincount([ann["image_id"] for ann in data["annotations"]], minlength=41)[1:]
    assert per_image.max() <= 4 and (per_image == 0).any() and (per_image > 0).mean() > 0.8
    assert {ann["category_id"] for ann in data["annotations"]} == {1, 2, 3}
    sides = np.array([ann["bbox"][2:] for ann in data["annotations"]]) / 96
    assert sides.min() >= 0.09 and sides.max() <= 0.63
