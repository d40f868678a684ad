"""The paper's train-time augmentation, step by step: hand-computed values, the sampler against a plain oracle."""
import cv2
import numpy as np
import pytest

from detectron2.data import transforms as T
from detectron2.data.transforms import CropTransform

from mutual_guide.data.augmentation import (
    CV2_INTERPOLATIONS,
    CV2ResizeTransform,
    DetectionAugInput,
    ExpandTransform,
    PhotometricDistortion,
    PhotometricTransform,
    RandomExpand,
    RandomInterpolationResize,
    RandomMinIoUCrop,
    build_augmentation,
    min_side_keep,
)

MEAN = (104.0, 117.0, 123.0)


def _image(h=60, w=100, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3)).astype(np.uint8)


def _run(augs, image, boxes):
    aug_input = DetectionAugInput(image, boxes=boxes)
    tfms = T.AugmentationList(augs)(aug_input)
    return aug_input, tfms


# ----------------------------------------------------------------------------- order
def test_recipe_is_the_papers_order(make_cfg):
    augs = build_augmentation(make_cfg(size=320), is_train=True)
    assert [type(a) for a in augs] == [
        RandomMinIoUCrop, PhotometricDistortion, RandomExpand, T.RandomFlip, RandomInterpolationResize
    ]
    assert augs[2].max_ratio == 4.0 and augs[2].prob == 0.6 and augs[2].fill == MEAN
    assert augs[1].hue_delta == 18 and augs[4].interps == CV2_INTERPOLATIONS


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


# ----------------------------------------------------------------------------- zoom-out
def test_expand_canvas_fill_and_boxes():
    np.random.seed(0)
    image = np.full((40, 50, 3), 7, dtype=np.uint8)
    boxes = np.array([[5, 6, 25, 30]], dtype=np.float32)
    for _ in range(20):
        out, tfms = _run([RandomExpand(max_ratio=4.0, fill=MEAN, prob=1.0)], image, boxes)
        tfm = tfms.transforms[0]
        h, w = out.image.shape[:2]
        # canvas: int(s r W) x int(s / r H) with s in [1, 4], r^2 in [max(1/2, 1/s^2), min(2, s^2)]
        sx, sy = w / 50, h / 40
        assert 1 <= sx <= 4 * 2**0.5 and 1 <= sy <= 4 * 2**0.5 and (sx * sy) ** 0.5 <= 4 + 0.05
        assert 0.5 - 0.05 <= sx / sy <= 2 + 0.05
        assert 0 <= tfm.x0 <= w - 50 and 0 <= tfm.y0 <= h - 40
        pasted = np.zeros((h, w), dtype=bool)
        pasted[tfm.y0 : tfm.y0 + 40, tfm.x0 : tfm.x0 + 50] = True
        assert (out.image[pasted] == 7).all()
        assert (out.image[~pasted] == np.array(MEAN, dtype=np.uint8)).all()
        np.testing.assert_array_equal(out.boxes, [[5 + tfm.x0, 6 + tfm.y0, 25 + tfm.x0, 30 + tfm.y0]])


def test_expand_probability_and_canvas_shape_varies():
    np.random.seed(0)
    aug = RandomExpand(prob=0.6)
    tfms = [aug.get_transform(_image(100, 100)) for _ in range(2000)]
    expanded = [t for t in tfms if isinstance(t, ExpandTransform)]
    assert abs(len(expanded) / 2000 - 0.6) < 0.035  # 3 standard errors
    aspects = [(100 + t.x0 + t.x1) / (100 + t.y0 + t.y1) for t in expanded]
    assert min(aspects) < 0.8 and max(aspects) > 1.25  # the authors' canvas is not square (ours used to be)


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


def _oracle_crop(image, boxes, modes, trials=50):
    """The authors' _crop written plainly, one trial at a time, drawing the same numbers as the sampler."""
    height, width = image.shape[:2]

    def iou(b, roi):
        iw = max(0.0, min(b[2], roi[2]) - max(b[0], roi[0]))
        ih = max(0.0, min(b[3], roi[3]) - max(b[1], roi[1]))
        inter = iw * ih
        return inter / ((b[2] - b[0]) * (b[3] - b[1]) + (roi[2] - roi[0]) * (roi[3] - roi[1]) - inter)

    while True:
        min_iou = modes[np.random.randint(len(modes))]
        if min_iou is None:
            return None
        scale = np.random.uniform(0.3, 1.0, trials)
        ratio = np.sqrt(np.random.uniform(np.maximum(0.5, scale**2), np.minimum(2.0, 1.0 / scale**2)))
        u_left, u_top = np.random.random_sample(trials), np.random.random_sample(trials)
        for i in range(trials):
            w, h = int(scale[i] * ratio[i] * width), int(scale[i] / ratio[i] * height)
            left, top = int(u_left[i] * (width - w)), int(u_top[i] * (height - h))
            roi = (left, top, left + w, top + h)
            if min(iou(b, roi) for b in boxes) < min_iou:
                continue
            if any(left < (b[0] + b[2]) / 2 < left + w and top < (b[1] + b[3]) / 2 < top + h for b in boxes):
                return left, top, w, h


def test_min_iou_crop_against_plain_oracle():
    image = _image(120, 160)
    boxes = np.array([[10, 10, 60, 50], [80, 40, 150, 110], [30, 70, 70, 115]], dtype=np.float64)
    crop = RandomMinIoUCrop()
    outcomes = set()
    for seed in range(60):
        np.random.seed(seed)
        tfm = crop.get_transform(image, boxes)
        np.random.seed(seed)
        expected = _oracle_crop(image, boxes, RandomMinIoUCrop.MODES)
        got = None if not isinstance(tfm, CropTransform) else (tfm.x0, tfm.y0, tfm.w, tfm.h)
        assert got == expected, seed
        outcomes.add(got is None)
        if got is not None:  # integer offsets from randrange: the crop never reaches the last column/row
            assert tfm.x0 + tfm.w < 160 and tfm.y0 + tfm.h < 120
    assert outcomes == {True, False}


def test_min_iou_crop_without_boxes_is_no_crop():
    assert isinstance(RandomMinIoUCrop().get_transform(_image(), np.zeros((0, 4))), T.NoOpTransform)


# ----------------------------------------------------------------------------- photometric distortion
def test_photometric_values_by_hand():
    img = np.array([[[250, 100, 10]]], dtype=np.uint8)
    hsv_round_trip = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), cv2.COLOR_HSV2BGR)
    # brightness +32.7: 282.7 -> 255, 132.7 -> 132 (truncated, not rounded), 42.7 -> 42
    expected = np.array([[[255, 132, 42]]], dtype=np.uint8)
    np.testing.assert_array_equal(
        PhotometricTransform(brightness=32.7).apply_image(img),
        cv2.cvtColor(cv2.cvtColor(expected, cv2.COLOR_BGR2HSV), cv2.COLOR_HSV2BGR),
    )
    # brightness -20.5 then contrast 0.5 on the truncated values: 229 * 0.5 -> 114, 79 -> 39, 0 -> 0
    expected = np.array([[[114, 39, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(
        PhotometricTransform(brightness=-20.5, contrast=0.5).apply_image(img),
        cv2.cvtColor(cv2.cvtColor(expected, cv2.COLOR_BGR2HSV), cv2.COLOR_HSV2BGR),
    )
    # no change drawn: still one uint8 HSV round trip, as the authors' code always does
    np.testing.assert_array_equal(PhotometricTransform().apply_image(img), hsv_round_trip)


def test_photometric_hue_in_opencv_units_and_saturation():
    red = np.array([[[0, 0, 255]]], dtype=np.uint8)  # BGR; OpenCV hue 0
    np.testing.assert_array_equal(PhotometricTransform(hue=60).apply_image(red), [[[0, 255, 0]]])  # +120 degrees
    np.testing.assert_array_equal(PhotometricTransform(hue=-60).apply_image(red), [[[255, 0, 0]]])  # wraps: 120
    grey = PhotometricTransform(saturation=0.0).apply_image(np.array([[[40, 90, 200]]], dtype=np.uint8))
    assert grey[0, 0, 0] == grey[0, 0, 1] == grey[0, 0, 2] == 200  # value (max channel) kept


def test_photometric_refuses_float_images():
    with pytest.raises(ValueError, match="uint8"):
        PhotometricTransform(brightness=3).apply_image(np.zeros((4, 4, 3), np.float32))


def test_photometric_draws():
    np.random.seed(1)
    aug = PhotometricDistortion()
    tfms = [aug.get_transform(_image(4, 4)) for _ in range(2000)]
    for key, low, high in (("brightness", -32, 32), ("contrast", 0.5, 1.5), ("saturation", 0.5, 1.5)):
        values = [getattr(t, key) for t in tfms if getattr(t, key) is not None]
        assert abs(len(values) / 2000 - 0.5) < 0.034, key  # 3 standard errors
        assert low <= min(values) and max(values) <= high
    hues = [t.hue for t in tfms if t.hue is not None]
    assert abs(len(hues) / 2000 - 0.5) < 0.034
    assert set(hues) == set(range(-18, 19))  # integers, both ends included (Python's randint)


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


def test_min_side_keep_is_strict():
    boxes = [[0, 0, 3.1, 100], [0, 0, 3.3, 100], [10, 10, 10, 50], [0, 0, 320, 320]]
    np.testing.assert_array_equal(min_side_keep(boxes, (320, 320), 0.01), [False, True, False, True])
    # relative to the side along which the box is measured: 3.3 / 640 < 0.01
    np.testing.assert_array_equal(min_side_keep([[0, 0, 3.3, 100]], (320, 640), 0.01), [False])
    # exactly at the ratio: dropped (the authors' code keeps min(w, h) > ratio)
    np.testing.assert_array_equal(min_side_keep([[0, 0, 16, 32], [0, 0, 16.5, 32]], (64, 64), 0.25), [False, True])


# ----------------------------------------------------------------------------- the whole recipe
def test_full_recipe_invariants_and_determinism(make_cfg):
    boxes = np.array([[10, 20, 120, 90], [100, 5, 190, 60], [40, 100, 80, 140]], dtype=np.float32)
    augs = build_augmentation(make_cfg(size=320), is_train=True)
    for seed in range(30):
        np.random.seed(seed)
        out, _ = _run(augs, _image(150, 200, seed), boxes)
        assert out.image.shape == (320, 320, 3) and out.image.dtype == np.uint8
        assert len(out.boxes) == len(out.kept) >= 1
        assert (out.boxes >= 0).all() and (out.boxes <= 320).all()
        assert (out.boxes[:, 2:] >= out.boxes[:, :2]).all()
    results = []
    for seed in (3, 3, 4):
        np.random.seed(seed)
        results.append(_run(augs, _image(150, 200), boxes)[0])
    np.testing.assert_array_equal(results[0].image, results[1].image)
    np.testing.assert_array_equal(results[0].boxes, results[1].boxes)
    assert not np.array_equal(results[0].image, results[2].image)


def test_no_augment_is_resize_only(make_cfg):
    cfg = make_cfg(size=64)
    assert [type(a) for a in build_augmentation(cfg, is_train=False)] == [RandomInterpolationResize]
    cfg.INPUT.MG_AUGMENT = False
    (aug,) = build_augmentation(cfg, is_train=True)
    assert aug.interps == (cv2.INTER_LINEAR,)


@pytest.mark.parametrize("shape", [(7, 9, 3), (7, 9), (7, 9, 1), (7, 9, 4), (7, 9, 5)])
@pytest.mark.parametrize("fill", [MEAN, 123.9, 0])
def test_expand_canvas_is_the_fill_around_the_image(shape, fill):
    # OpenCV's border for 2-4 channels, the numpy canvas otherwise: the same pixels, the fill truncated to uint8
    image = np.random.RandomState(1).randint(0, 256, size=shape).astype(np.uint8)
    fill = fill if np.ndim(fill) == 0 or len(shape) == 3 and shape[2] == 3 else fill[0]
    out = ExpandTransform(3, 5, 7, 2, orig_w=9, orig_h=7, pad_value=fill).apply_image(image)
    expected = np.empty((14, 19) + shape[2:], dtype=np.uint8)
    expected[...] = np.asarray(fill, dtype=np.uint8)
    expected[5:12, 3:12] = image
    assert out.shape == expected.shape and out.dtype == np.uint8
    assert np.array_equal(out, expected)
