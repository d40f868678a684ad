"""The mapper's rules around the augmentation, as the authors' `preproc` has them: its fall-backs, crowd boxes."""
import cv2
import numpy as np
import pytest

from detectron2.data.transforms import CropTransform
from detectron2.structures import BoxMode

from mutual_guide.data import MutualGuideDatasetMapper
from mutual_guide.data.augmentation import CV2_INTERPOLATIONS, RandomInterpolationResize


def _dict(path, h, w, boxes, classes, crowd=None):
    crowd = crowd or [0] * len(boxes)
    cv2.imwrite(str(path), np.random.RandomState(0).randint(0, 256, (h, w, 3)).astype(np.uint8))
    return {
        "file_name": str(path), "image_id": 1, "height": h, "width": w,
        "annotations": [{"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": z}
                        for b, c, z in zip(boxes, classes, crowd)],
    }


def test_fallback_keeps_every_original_box(tmp_path):
    # the crop loses the objects: the authors' code then trains on the original image resized with all its boxes, the
    # one under the minimum side included (its fall-back applies no size rule)
    d = _dict(tmp_path / "a.png", 100, 100, [[40, 40, 60, 60], [70, 70, 70.5, 90]], [2, 1])
    mapper = MutualGuideDatasetMapper(
        is_train=True, augmentations=[CropTransform(0, 0, 20, 20), RandomInterpolationResize(64)],
        image_format="BGR", min_box_side_ratio=0.01, size=64, fallback_resize=RandomInterpolationResize(64),
    )
    inst = mapper(d)["instances"]
    assert inst.gt_classes.tolist() == [2, 1]
    np.testing.assert_allclose(inst.gt_boxes.tensor, [[25.6, 25.6, 38.4, 38.4], [44.8, 44.8, 45.12, 57.6]], rtol=1e-6)


def test_image_without_objects_is_only_resized(tmp_path, make_cfg):
    d = _dict(tmp_path / "a.png", 30, 40, [], [])
    image = cv2.imread(d["file_name"])
    resized = [cv2.resize(image, (64, 64), interpolation=i) for i in CV2_INTERPOLATIONS]
    mapper = MutualGuideDatasetMapper(make_cfg(size=64), is_train=True)
    for seed in range(10):
        np.random.seed(seed)
        out = mapper(d)
        got = out["image"].permute(1, 2, 0).numpy()
        assert any(np.array_equal(got, r) for r in resized)  # no crop, colour change, zoom-out or flip
        assert len(out["instances"]) == 0


@pytest.mark.parametrize("train_crowd", [True, False])
def test_crowd_boxes(tmp_path, train_crowd, make_cfg):
    d = _dict(tmp_path / "a.png", 50, 50, [[5, 5, 20, 20], [25, 25, 45, 45]], [0, 1], crowd=[0, 1])
    cfg = make_cfg(size=50)
    cfg.INPUT.MG_AUGMENT = False
    cfg.INPUT.TRAIN_CROWD_BOXES = train_crowd
    inst = MutualGuideDatasetMapper(cfg, is_train=True)(d)["instances"]
    assert inst.gt_classes.tolist() == ([0, 1] if train_crowd else [0])


def test_annotations_to_boxes_converts_all_boxes_as_one_by_one():
    from detectron2.structures import BoxMode

    from mutual_guide.data.mapper import annotations_to_boxes

    rng = np.random.RandomState(0)
    for mode in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
        annotations = [
            {"bbox": [float(v) for v in rng.uniform(0, 50, 4)] if i % 2 else [int(v) for v in rng.randint(0, 50, 4)],
             "bbox_mode": mode, "category_id": i % 3}
            for i in range(40)
        ]
        if mode == BoxMode.XYXY_ABS:
            for a in annotations:
                a["bbox"][2:] = [a["bbox"][0] + 1.5, a["bbox"][1] + 0.1]
        boxes, classes, dropped = annotations_to_boxes(annotations, (60, 70))
        one_by_one = np.array([BoxMode.convert(a["bbox"], mode, BoxMode.XYXY_ABS) for a in annotations], np.float32)
        one_by_one = np.clip(one_by_one, 0, [70, 60, 70, 60])
        keep = (one_by_one[:, 2] > one_by_one[:, 0]) & (one_by_one[:, 3] > one_by_one[:, 1])
        assert np.array_equal(boxes, one_by_one[keep]), mode
        assert classes.tolist() == [a["category_id"] for a, k in zip(annotations, keep) if k]
        assert dropped == int((~keep).sum())
    # mixed modes go one by one
    mixed = [{"bbox": [1, 2, 3, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
             {"bbox": [1, 2, 3, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1}]
    assert annotations_to_boxes(mixed, (60, 70))[0].tolist() == [[1, 2, 4, 6], [1, 2, 3, 4]]
