"""MutualGuideDatasetMapper: its output, boxes clipped and dropped, the fall-back, and unreadable images named."""
import cv2
import numpy as np
import pytest
import torch

from detectron2.structures import BoxMode

from mutual_guide.data import MutualGuideDatasetMapper


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


def test_mapper_train_output(tmp_path, make_cfg):
    d = _dict(_write_image(tmp_path / "a.png", 50, 80), 50, 80, [[10, 5, 60, 45], [40, 10, 78, 30]], [2, 0])
    np.random.seed(0)
    out = MutualGuideDatasetMapper(make_cfg(size=64), is_train=True)(d)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"], out["image_id"]) == (50, 80, 7)
    assert out["file_name"] == d["file_name"] and "annotations" not in out
    inst = out["instances"]
    assert inst.image_size == (64, 64) and len(inst) >= 1
    assert inst.gt_classes.dtype == torch.int64 and set(inst.gt_classes.tolist()) <= {0, 2}
    assert (inst.gt_boxes.tensor >= 0).all() and (inst.gt_boxes.tensor <= 64).all()
    assert "annotations" in d  # the input dict is left alone


def test_mapper_resize_only_boxes_and_test_image(tmp_path, make_cfg):
    d = _dict(_write_image(tmp_path / "a.png", 50, 80), 50, 80, [[10, 5, 60, 45]], [1])
    out = MutualGuideDatasetMapper(make_cfg(size=64, opts=["INPUT.MG_AUGMENT", False]), is_train=True)(d)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor, [[8.0, 6.4, 48.0, 57.6]], rtol=1e-6)
    assert out["instances"].gt_classes.tolist() == [1]

    test_out = MutualGuideDatasetMapper(make_cfg(size=64), is_train=False)(d)
    assert "instances" not in test_out and "annotations" not in test_out
    expected = cv2.resize(cv2.imread(d["file_name"]), (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(test_out["image"].permute(1, 2, 0).numpy(), expected)  # BGR
    assert (test_out["height"], test_out["width"]) == (50, 80)


def test_mapper_deterministic_under_seed(tmp_path, make_cfg):
    d = _dict(_write_image(tmp_path / "a.png", 50, 80), 50, 80, [[10, 5, 60, 45], [40, 10, 78, 30]])
    mapper = MutualGuideDatasetMapper(make_cfg(size=64), is_train=True)
    outs = []
    for seed in (5, 5):
        np.random.seed(seed)
        outs.append(mapper(d))
    assert torch.equal(outs[0]["image"], outs[1]["image"])
    assert torch.equal(outs[0]["instances"].gt_boxes.tensor, outs[1]["instances"].gt_boxes.tensor)


@pytest.mark.parametrize("augment", [True, False])
def test_mapper_image_without_objects(tmp_path, augment, make_cfg):
    d = _dict(_write_image(tmp_path / "a.png", 30, 40), 30, 40)
    np.random.seed(0)
    mapper = MutualGuideDatasetMapper(make_cfg(size=64, opts=["INPUT.MG_AUGMENT", augment]), is_train=True)
    inst = mapper(d)["instances"]
    assert len(inst) == 0 and inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_classes.dtype == torch.int64


def test_mapper_clips_out_of_image_and_drops_empty_boxes(tmp_path, make_cfg):
    boxes = [[-10, -5, 20, 30], [30, 10, 60, 40], [25, 25, 25, 28], [50, 10, 70, 20], [10, 10, 5, 5]]
    d = _dict(_write_image(tmp_path / "a.png", 32, 40), 32, 40, boxes, [0, 1, 2, 3, 4])
    mapper = MutualGuideDatasetMapper(make_cfg(size=64, opts=["INPUT.MG_AUGMENT", False]), is_train=True)
    inst = mapper(d)["instances"]
    # kept: the first clipped to (0, 0, 20, 30), the second clipped to x2 = 40; scaled by 64/40 and 64/32
    assert inst.gt_classes.tolist() == [0, 1]
    np.testing.assert_allclose(inst.gt_boxes.tensor, [[0, 0, 32, 60], [48, 20, 64, 64]])
    assert mapper.num_dropped_empty == 3  # zero width, fully outside, inverted


def test_mapper_drops_boxes_under_min_side(tmp_path, make_cfg):
    d = _dict(_write_image(tmp_path / "a.png", 100, 100), 100, 100, [[10, 10, 10.9, 50], [10, 10, 11.1, 50]], [0, 1])
    mapper = MutualGuideDatasetMapper(make_cfg(size=64, opts=["INPUT.MG_AUGMENT", False]), is_train=True)
    inst = mapper(d)["instances"]
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


def test_mapper_unreadable_and_missing_image_name_the_file(tmp_path, make_cfg):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    mapper = MutualGuideDatasetMapper(make_cfg(size=64), is_train=True)
    with pytest.raises(OSError, match="broken.jpg"):
        mapper(_dict(str(bad), 10, 10))
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        mapper(_dict(str(tmp_path / "nowhere.jpg"), 10, 10))
