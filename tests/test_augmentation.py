"""The paper's train-time augmentation: invariants of each step, hand-computed boxes, determinism."""
import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.data.transforms import ColorTransform, CropTransform

from mutual_guide import add_mutual_guide_config
from mutual_guide.data.augmentation import (
    CV2_INTERPOLATIONS,
    CV2ResizeTransform,
    DetectionAugInput,
    PhotometricDistortion,
    RandomExpand,
    RandomInterpolationResize,
    build_augmentation,
    min_side_keep,
    scale_contrast,
    scale_saturation,
    shift_brightness,
    shift_hue,
)

MEAN = (104.0, 117.0, 123.0)


def _cfg(size=320):
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.INPUT.SIZE = size
    return cfg


def _image(h=60, w=100, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3)).astype(np.uint8)


def _run(augs, image, boxes):
    aug_input = DetectionAugInput(image, boxes=boxes)
    tfms = T.AugmentationList(augs)(aug_input)
    return aug_input, tfms


# ----------------------------------------------------------------------------- flip
def test_flip_boxes_by_hand_and_twice_is_identity():
    image = _image(60, 100)
    boxes = np.array([[10, 20, 30, 40], [0, 0, 100, 60]], dtype=np.float32)
    flipped, _ = _run([T.RandomFlip(prob=1.0)], image, boxes)
    np.testing.assert_array_equal(flipped.boxes, [[70, 20, 90, 40], [0, 0, 100, 60]])
    np.testing.assert_array_equal(flipped.image[:, 0], image[:, 99])

    back, _ = _run([T.RandomFlip(prob=1.0)], flipped.image, flipped.boxes)
    np.testing.assert_array_equal(back.image, image)
    np.testing.assert_array_equal(back.boxes, boxes)


# ----------------------------------------------------------------------------- expansion
@pytest.mark.parametrize("seed", range(5))
def test_expand_fills_with_mean_and_shifts_boxes(seed):
    np.random.seed(seed)
    image = np.full((40, 50, 3), 7, dtype=np.uint8)
    boxes = np.array([[5, 6, 25, 30]], dtype=np.float32)
    out, tfms = _run([RandomExpand(max_ratio=4.0, fill=MEAN, prob=1.0)], image, boxes)
    tfm = tfms.transforms[0]
    h, w = out.image.shape[:2]
    assert 40 <= h <= 160 and 50 <= w <= 200 and (h, w) != (40, 50)
    pasted = np.zeros((h, w), dtype=bool)
    pasted[tfm.y0 : tfm.y0 + 40, tfm.x0 : tfm.x0 + 50] = True
    assert (out.image[pasted] == 7).all()
    np.testing.assert_array_equal(out.image[~pasted], np.tile(np.array(MEAN, dtype=np.uint8), ((~pasted).sum(), 1)))
    np.testing.assert_array_equal(out.boxes, [[5 + tfm.x0, 6 + tfm.y0, 25 + tfm.x0, 30 + tfm.y0]])


def test_expand_probability():
    np.random.seed(0)
    aug = RandomExpand(prob=0.6)
    applied = [aug.get_transform(_image(10, 10)).__class__.__name__ == "ExpandTransform" for _ in range(2000)]
    assert abs(np.mean(applied) - 0.6) < 0.04


# ----------------------------------------------------------------------------- crop
def test_crop_keeps_exactly_the_boxes_with_centre_inside_and_clips_them():
    image = _image(60, 100)
    boxes = np.array(
        [
            [30, 20, 50, 30],  # centre (40, 25) inside: kept whole
            [10, 5, 40, 25],  # centre (25, 15) inside, sticks out left and top: clipped
            [60, 40, 90, 58],  # centre (75, 49) outside (right of the crop), overlaps it: dropped
            [0, 0, 10, 10],  # outside: dropped
            [10, 10, 30, 30],  # centre (20, 20) on the crop's left edge: dropped (strictly inside only)
        ],
        dtype=np.float32,
    )
    aug_input = DetectionAugInput(image, boxes=boxes)
    aug_input.transform(CropTransform(20, 10, 50, 40))  # x in (20, 70), y in (10, 50)
    assert aug_input.image.shape == (40, 50, 3)
    np.testing.assert_array_equal(aug_input.kept, [0, 1])
    np.testing.assert_array_equal(aug_input.boxes, [[10, 10, 30, 20], [0, 0, 20, 15]])


@pytest.mark.parametrize("seed", range(20))
def test_min_iou_crop_keeps_a_box_and_only_centres_inside(seed):
    np.random.seed(seed)
    image = _image(120, 160)
    boxes = np.array([[10, 10, 60, 50], [80, 40, 150, 110], [30, 70, 70, 115]], dtype=np.float32)
    out, tfms = _run([T.MinIoURandomCrop()], image, boxes)
    tfm = tfms.transforms[0]
    if isinstance(tfm, CropTransform):
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (
            (centres[:, 0] > tfm.x0)
            & (centres[:, 0] < tfm.x0 + tfm.w)
            & (centres[:, 1] > tfm.y0)
            & (centres[:, 1] < tfm.y0 + tfm.h)
        )
        np.testing.assert_array_equal(out.kept, np.flatnonzero(inside))
        assert out.image.shape[:2] == (tfm.h, tfm.w)
    else:
        np.testing.assert_array_equal(out.boxes, boxes)
    assert len(out.boxes) >= 1


# ----------------------------------------------------------------------------- resize and min side
def test_resize_scales_boxes_by_hand():
    image = _image(100, 200)
    out, _ = _run([RandomInterpolationResize(320, interps=(cv2.INTER_LINEAR,))], image, [[20, 10, 60, 50]])
    assert out.image.shape == (320, 320, 3)
    np.testing.assert_allclose(out.boxes, [[32, 32, 96, 160]])
    np.testing.assert_array_equal(out.image, cv2.resize(image, (320, 320), interpolation=cv2.INTER_LINEAR))


def test_resize_interpolation_is_random_among_the_five():
    np.random.seed(0)
    image = _image(50, 70)
    aug = RandomInterpolationResize(64)
    seen = set()
    for _ in range(60):
        tfm = aug.get_transform(image)
        assert isinstance(tfm, CV2ResizeTransform)
        np.testing.assert_array_equal(tfm.apply_image(image), cv2.resize(image, (64, 64), interpolation=tfm.interp))
        seen.add(tfm.interp)
    assert seen == set(CV2_INTERPOLATIONS)


def test_min_side_keep():
    boxes = [[0, 0, 3.1, 100], [0, 0, 3.3, 100], [10, 10, 10, 50], [0, 0, 320, 320]]
    np.testing.assert_array_equal(min_side_keep(boxes, (320, 320), 0.01), [False, True, False, True])
    # relative to the side along which the box is measured: 3.3 / 640 < 0.01
    np.testing.assert_array_equal(min_side_keep([[0, 0, 3.3, 100]], (320, 640), 0.01), [False])


# ----------------------------------------------------------------------------- photometric
def test_photometric_ops_values():
    img = np.array([[[250, 100, 10]]], dtype=np.uint8)
    np.testing.assert_array_equal(shift_brightness(img, 32), [[[255, 132, 42]]])
    np.testing.assert_array_equal(shift_brightness(img, -32), [[[218, 68, 0]]])
    np.testing.assert_array_equal(scale_contrast(img, 0.5), [[[125, 50, 5]]])
    red = np.array([[[0, 0, 255]]], dtype=np.uint8)  # BGR
    np.testing.assert_array_equal(shift_hue(red, 120), [[[0, 255, 0]]])
    np.testing.assert_array_equal(shift_hue(red, -120), [[[255, 0, 0]]])
    grey = scale_saturation(np.array([[[40, 90, 200]]], dtype=np.uint8), 0.0)
    assert grey[0, 0, 0] == grey[0, 0, 1] == grey[0, 0, 2] == 200  # value (max channel) kept


def test_photometric_order_and_ranges():
    np.random.seed(0)
    aug = PhotometricDistortion(prob=1.0)
    orders = set()
    for _ in range(50):
        tfm = aug.get_transform(_image(8, 8))
        ops = [t.op for t in tfm.transforms]
        assert all(isinstance(t, ColorTransform) for t in tfm.transforms)
        names = tuple(op.func.__name__ for op in ops)
        orders.add(names)
        assert abs(ops[0].keywords["delta"]) <= 32
        for op in ops:
            if op.func in (scale_contrast, scale_saturation):
                assert 0.5 <= op.keywords["alpha"] <= 1.5
            if op.func is shift_hue:
                assert abs(op.keywords["degrees"]) <= 18
    assert orders == {
        ("shift_brightness", "scale_contrast", "shift_hue", "scale_saturation"),
        ("shift_brightness", "shift_hue", "scale_saturation", "scale_contrast"),
    }


def test_photometric_each_op_with_probability_half():
    np.random.seed(1)
    aug = PhotometricDistortion()
    counts = {}
    for _ in range(1000):
        tfm = aug.get_transform(_image(4, 4))
        for t in getattr(tfm, "transforms", []):
            counts[t.op.func.__name__] = counts.get(t.op.func.__name__, 0) + 1
    assert set(counts) == {"shift_brightness", "scale_contrast", "shift_hue", "scale_saturation"}
    for n in counts.values():
        assert 440 < n < 560


# ----------------------------------------------------------------------------- the whole recipe
def _boxes():
    return np.array([[10, 20, 120, 90], [100, 5, 190, 60], [40, 100, 80, 140]], dtype=np.float32)


@pytest.mark.parametrize("seed", range(30))
def test_full_recipe_invariants(seed):
    np.random.seed(seed)
    out, _ = _run(build_augmentation(_cfg(320), is_train=True), _image(150, 200, seed), _boxes())
    assert out.image.shape == (320, 320, 3) and out.image.dtype == np.uint8
    assert len(out.boxes) == len(out.kept) >= 1
    assert (out.boxes >= 0).all() and (out.boxes <= 320).all()
    assert (out.boxes[:, 2:] >= out.boxes[:, :2]).all()


def test_full_recipe_is_deterministic_under_seed():
    augs = build_augmentation(_cfg(128), is_train=True)
    results = []
    for seed in (3, 3, 4):
        np.random.seed(seed)
        results.append(_run(augs, _image(150, 200), _boxes())[0])
    np.testing.assert_array_equal(results[0].image, results[1].image)
    np.testing.assert_array_equal(results[0].boxes, results[1].boxes)
    assert not np.array_equal(results[0].image, results[2].image)


def test_no_augment_is_resize_only():
    cfg = _cfg(64)
    assert [type(a) for a in build_augmentation(cfg, is_train=False)] == [RandomInterpolationResize]
    cfg.INPUT.MG_AUGMENT = False
    (aug,) = build_augmentation(cfg, is_train=True)
    assert aug.interps == (cv2.INTER_LINEAR,)
