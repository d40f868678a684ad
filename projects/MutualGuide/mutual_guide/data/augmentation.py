"""
The paper's train-time augmentation (`preproc` in data/data_augment.py at fd2c4cc) on detectron2's
Augmentation/Transform API.

Order, as the paper's code: min-IoU crop -> photometric distortion -> zoom-out -> horizontal flip -> resize to S x S
with one of five OpenCV interpolations. Boxes whose shorter side ends at or under `MIN_BOX_SIDE_RATIO` of the
image are dropped afterwards (`min_side_keep`); when none is left, the mapper falls back to the original image
resized, with all its boxes.

The image stays uint8 throughout, as in the paper's code: the photometric distortion truncates to uint8 after each
step and goes through OpenCV's uint8 HSV (hue 0-180) once. Transforms cannot drop boxes, so the one step that
removes objects (the crop keeps the boxes whose centres fall inside it) is carried out by `DetectionAugInput`.
The paper's code draws from Python's `random`; here all randomness comes from numpy's global RNG, as in
detectron2, so `np.random.seed` makes a run repeatable: the samples differ from the paper's code's, their
distributions do not
(parity/check_paper_augmentation.py measures both).
"""
import cv2
import numpy as np
from fvcore.transforms.transform import CropTransform, NoOpTransform, PadTransform, Transform, TransformList

from detectron2.data import transforms as T

from mutual_guide.data.crop_expand import RandomCropExpand, ToUint8
from mutual_guide.data.resize import resize_image

__all__ = [
    "AUGMENT_RECIPES",
    "CV2_INTERPOLATIONS",
    "CV2ResizeTransform",
    "DetectionAugInput",
    "ExpandTransform",
    "PhotometricDistortion",
    "PhotometricTransform",
    "RandomExpand",
    "RandomInterpolationResize",
    "RandomMinIoUCrop",
    "authors_2023_augmentation",
    "build_augmentation",
    "min_side_keep",
    "plain_resize",
]

# The paper's code resizes training images with one of these, picked at random per image.
CV2_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)


# ----------------------------------------------------------------------------- transforms
class ExpandTransform(PadTransform):
    """PadTransform whose fill is one value per channel (np.pad only takes one value for all channels)."""

    def apply_image(self, img):
        fill = np.broadcast_to(np.asarray(self.pad_value, dtype=img.dtype), img.shape[2:] or (1,))
        if img.dtype == np.uint8 and (img.ndim == 2 or 2 <= img.shape[2] <= 4):  # (cv2 drops a channel axis of 1)
            # OpenCV's constant border: one pass, the same pixels as filling a canvas and copying the image in
            return cv2.copyMakeBorder(
                img, self.y0, self.y1, self.x0, self.x1, cv2.BORDER_CONSTANT, value=[int(v) for v in fill]
            )
        h, w = img.shape[:2]
        canvas = np.empty((self.y0 + h + self.y1, self.x0 + w + self.x1) + img.shape[2:], dtype=img.dtype)
        canvas[...] = fill
        canvas[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = img
        return canvas


class CV2ResizeTransform(T.ResizeTransform):
    """ResizeTransform with an OpenCV interpolation flag (detectron2's takes PIL's), as the paper's code resizes."""

    def apply_image(self, img, interp=None):
        assert img.shape[:2] == (self.h, self.w), (img.shape, (self.h, self.w))
        return resize_image(img, self.new_h, self.new_w, self.interp if interp is None else interp)

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)

    def inverse(self):
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


def truncating_lut(alpha=1.0, beta=0.0):
    """
    The paper's `_convert` as a 256-entry table: v * alpha + beta in float64, clipped to [0, 255] and truncated
    (not rounded) to uint8, as assigning floats into its uint8 image does.
    """
    return np.clip(np.arange(256, dtype=np.float64) * alpha + beta, 0, 255).astype(np.uint8)


class PhotometricTransform(Transform):
    """
    The paper's `_distort` with its random values drawn: brightness (add `brightness`), then contrast (multiply by
    `contrast`), each truncated to uint8; then BGR -> HSV (OpenCV uint8: hue 0-179, saturation 0-255), hue
    moved by the integer `hue` modulo 180, saturation multiplied by `saturation` and truncated, and back to BGR.
    A None value skips its step; the HSV round trip happens in any case, as in the paper's code (it is lossy).
    Per-pixel steps are 256-entry tables (cv2.LUT): the same numbers as the paper's float64 arithmetic.
    """

    def __init__(self, brightness=None, contrast=None, hue=None, saturation=None):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"PhotometricTransform needs a uint8 BGR image (H x W x 3), got {img.dtype} {img.shape}")
        lut = np.arange(256, dtype=np.uint8)
        if self.brightness is not None:
            lut = truncating_lut(beta=self.brightness)[lut]
        if self.contrast is not None:
            lut = truncating_lut(alpha=self.contrast)[lut]
        if self.brightness is not None or self.contrast is not None:
            img = cv2.LUT(img, lut)
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if self.hue is not None or self.saturation is not None:
            hue = (np.arange(256) + (self.hue or 0)) % 180
            saturation = truncating_lut(alpha=1.0 if self.saturation is None else self.saturation)
            value = np.arange(256, dtype=np.uint8)
            hsv = cv2.LUT(hsv, np.stack([hue.astype(np.uint8), saturation, value], axis=-1)[:, None])
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def apply_coords(self, coords):
        return coords

    def inverse(self):
        return NoOpTransform()


# ----------------------------------------------------------------------------- augmentations
class RandomMinIoUCrop(T.Augmentation):
    """
    The paper's `_crop`. Pick a mode at random among {no crop, IoU >= 0.1, 0.3, 0.5, 0.7, 0.9, unconstrained};
    try up to 50 crops for it, then pick a new mode. A crop has scale s ~ U(0.3, 1) and aspect r with
    r^2 ~ U(max(0.5, s^2), min(2, 1 / s^2)); its sides are int(s r W) x int(s / r H) and its offsets integers,
    uniform in [0, W - w) and [0, H - h) (the paper's `random.randrange`). It is accepted when every box has at
    least the mode's IoU with it and at least one box centre lies strictly inside it.

    detectron2's MinIoURandomCrop samples the two sides independently (another distribution of crops), so it
    is not used. The 50 trials of a mode are drawn at once and the first acceptable one taken: the trials are
    independent, so this is the paper's distribution.
    """

    MODES = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -np.inf)  # None: no crop; -inf: no IoU constraint

    def __init__(self, min_scale=0.3, trials=50):
        self._init(locals())

    def get_transform(self, image, boxes):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return NoOpTransform()
        height, width = image.shape[:2]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        while True:  # ends: each round returns "no crop" with probability 1/7
            min_iou = self.MODES[np.random.randint(len(self.MODES))]
            if min_iou is None:
                return NoOpTransform()
            scale = np.random.uniform(self.min_scale, 1.0, self.trials)
            ratio = np.sqrt(np.random.uniform(np.maximum(0.5, scale**2), np.minimum(2.0, 1.0 / scale**2)))
            w = (scale * ratio * width).astype(np.int64)
            h = (scale / ratio * height).astype(np.int64)
            # the paper's randrange(n) is uniform on 0..n-1; at n = 0 it raises, here the offset is 0
            left = (np.random.random_sample(self.trials) * (width - w)).astype(np.int64)
            top = (np.random.random_sample(self.trials) * (height - h)).astype(np.int64)
            rois = np.stack([left, top, left + w, top + h], axis=1).astype(np.float64)
            ok = _iou(boxes, rois).min(axis=0) >= min_iou
            inside = (rois[:, None, :2] < centres) & (centres < rois[:, None, 2:])  # trials x boxes x 2
            ok &= inside.all(axis=2).any(axis=1)
            if ok.any():
                i = int(np.argmax(ok))
                return CropTransform(int(left[i]), int(top[i]), int(w[i]), int(h[i]), width, height)


def _iou(boxes, rois):
    """IoU of every box (N x 4) with every roi (K x 4), N x K, as the paper's `matrix_iou` (areas without +1).
    Numpy over all trials at once; detectron2's pairwise_iou would need torch tensors for every crop."""
    lt = np.maximum(boxes[:, None, :2], rois[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], rois[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_boxes = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    area_rois = np.prod(rois[:, 2:] - rois[:, :2], axis=1)
    return inter / (area_boxes[:, None] + area_rois[None, :] - inter)


class PhotometricDistortion(T.Augmentation):
    """
    The paper's `_distort`: brightness shift U(-`brightness_delta`, +) and contrast scale U(`contrast`), then in
    HSV an integer hue shift in [-`hue_delta`, `hue_delta`] OpenCV units (2 degrees each: the paper's 18 is 36
    degrees) and a saturation scale U(`saturation`), each with probability 1/2, always in that order.
    """

    def __init__(self, brightness_delta=32.0, contrast=(0.5, 1.5), hue_delta=18, saturation=(0.5, 1.5)):
        self._init(locals())

    def get_transform(self, image):
        brightness = np.random.uniform(-self.brightness_delta, self.brightness_delta) if _coin() else None
        contrast = np.random.uniform(*self.contrast) if _coin() else None
        hue = int(np.random.randint(-self.hue_delta, self.hue_delta + 1)) if _coin() else None
        saturation = np.random.uniform(*self.saturation) if _coin() else None
        return PhotometricTransform(brightness, contrast, hue, saturation)


def _coin():
    return np.random.randint(2) == 1


class RandomExpand(T.Augmentation):
    """
    The paper's `_expand` (zoom-out): with probability `prob`, paste the image at a random integer position of a
    canvas filled with `fill` (the pixel mean, one value per channel). The canvas has scale s ~ U(1, max_ratio)
    and aspect r with r^2 ~ U(max(0.5, 1 / s^2), min(2, s^2)): its sides are int(s r W) x int(s / r H), so its
    area is s^2 times the image's while its shape may differ from the image's.
    """

    def __init__(self, max_ratio=4.0, fill=(104.0, 117.0, 123.0), prob=0.6):
        self._init(locals())

    def get_transform(self, image):
        if np.random.random_sample() > self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        while True:  # the paper's retry; r^2 in [1 / s^2, s^2] keeps both factors >= 1 but for rounding
            scale = np.random.uniform(1.0, self.max_ratio)
            ratio = np.sqrt(np.random.uniform(max(0.5, 1.0 / scale**2), min(2.0, scale**2)))
            if scale * ratio >= 1 and scale / ratio >= 1:
                break
        new_w, new_h = int(scale * ratio * w), int(scale / ratio * h)
        left = int(np.random.randint(0, new_w - w + 1))
        top = int(np.random.randint(0, new_h - h + 1))
        return ExpandTransform(
            left, top, new_w - w - left, new_h - h - top, orig_w=w, orig_h=h, pad_value=tuple(self.fill)
        )


class RandomInterpolationResize(T.Augmentation):
    """Resize to `size` x `size` (aspect ratio not kept) with an interpolation picked from `interps`."""

    def __init__(self, size, interps=CV2_INTERPOLATIONS):
        self._init(locals())

    def get_transform(self, image):
        interp = self.interps[np.random.randint(len(self.interps))] if len(self.interps) > 1 else self.interps[0]
        return CV2ResizeTransform(image.shape[0], image.shape[1], self.size, self.size, interp)


def plain_resize(size):
    """The paper's test preprocessing as an Augmentation (boxes follow): the pixels of `resize.resize_to_input`."""
    return RandomInterpolationResize(size, interps=(cv2.INTER_LINEAR,))


AUGMENT_RECIPES = ("paper", "authors_2023")  # INPUT.MG_AUGMENT_RECIPE


def build_augmentation(cfg, is_train):
    """
    The augmentations of one image at train time with INPUT.MG_AUGMENT: INPUT.MG_AUGMENT_RECIPE "paper" (the paper's
    code, fd2c4cc) or "authors_2023" (the authors' code at 108b4a8, `authors_2023_augmentation`); otherwise only the
    resize to INPUT.SIZE with cv2.INTER_LINEAR (the paper's test preprocessing).
    """
    size = cfg.INPUT.SIZE
    if not (is_train and cfg.INPUT.MG_AUGMENT):
        return [plain_resize(size)]
    recipe = cfg.INPUT.MG_AUGMENT_RECIPE
    if recipe not in AUGMENT_RECIPES:
        raise ValueError(f"INPUT.MG_AUGMENT_RECIPE must be one of {', '.join(AUGMENT_RECIPES)}; got {recipe!r}")
    if recipe == "authors_2023":
        return authors_2023_augmentation(size, cfg.INPUT.HUE_DELTA)
    return [
        RandomMinIoUCrop(),
        PhotometricDistortion(hue_delta=cfg.INPUT.HUE_DELTA),
        RandomExpand(cfg.INPUT.EXPAND_MAX_RATIO, fill=tuple(cfg.MODEL.PIXEL_MEAN), prob=cfg.INPUT.EXPAND_PROB),
        T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
        RandomInterpolationResize(size),
    ]


def authors_2023_augmentation(size, hue_delta=18):
    """
    data/data_augment.py's `preproc_for_train` at 108b4a8, after their loader's resize to S x S (cv2.INTER_LINEAR):
    the same colour distortion as the paper's, now first; then crop-or-zoom-out (crop_expand.py); mirror; resize to
    S x S with cv2.INTER_LINEAR only (no random interpolation); the float canvas back to uint8. No mosaic or mixup:
    every step sees one image. They drop no small box afterwards (INPUT.MIN_BOX_SIDE_RATIO 0 does the same).
    """
    return [
        plain_resize(size),
        PhotometricDistortion(hue_delta=hue_delta),
        RandomCropExpand(),
        T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
        plain_resize(size),
        ToUint8(),
    ]


# ----------------------------------------------------------------------------- boxes through the augmentations
class DetectionAugInput(T.AugInput):
    """
    AugInput whose boxes follow the paper's rules: a CropTransform keeps only the boxes whose centres fall
    strictly inside the crop, and after every transform boxes are clipped to the image.
    `self.kept` holds, for each remaining box, its index in the input boxes (to select classes with).
    """

    def __init__(self, image, *, boxes):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        super().__init__(image, boxes=boxes)
        self.kept = np.arange(len(boxes))

    def transform(self, tfm):
        if isinstance(tfm, TransformList):
            for t in tfm.transforms:
                self.transform(t)
            return
        if isinstance(tfm, CropTransform):
            centres = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2.0
            inside = (
                (centres[:, 0] > tfm.x0)
                & (centres[:, 0] < tfm.x0 + tfm.w)
                & (centres[:, 1] > tfm.y0)
                & (centres[:, 1] < tfm.y0 + tfm.h)
            )
            self.boxes, self.kept = self.boxes[inside], self.kept[inside]
        elif hasattr(tfm, "kept_boxes"):  # crop_expand.CropExpandTransform's own rule
            inside = tfm.kept_boxes(self.boxes)
            self.boxes, self.kept = self.boxes[inside], self.kept[inside]
        super().transform(tfm)
        h, w = self.image.shape[:2]
        self.boxes = np.clip(self.boxes.reshape(-1, 4), 0, [w, h, w, h]).astype(np.float32)


def min_side_keep(boxes, image_size, min_side_ratio):
    """
    Mask of the boxes (N x 4 XYXY) kept: the shorter side, relative to the image side along it, must be more
    than `min_side_ratio` (strictly, as the paper's `np.minimum(b_w, b_h) > 0.01`). `image_size` is (h, w).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    h, w = image_size
    rel_w = (boxes[:, 2] - boxes[:, 0]) / w
    rel_h = (boxes[:, 3] - boxes[:, 1]) / h
    return (np.minimum(rel_w, rel_h) > min_side_ratio) & (rel_w > 0) & (rel_h > 0)
