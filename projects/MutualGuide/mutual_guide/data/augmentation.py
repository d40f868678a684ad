"""
The paper's SSD-style train-time augmentation, on detectron2's Augmentation/Transform API.

Order (as in the paper's code): photometric distortion -> zoom-out expansion -> min-IoU random crop ->
horizontal flip -> resize to S x S with a random interpolation; boxes whose shorter side ends under
`MIN_BOX_SIDE_RATIO` of the image are dropped afterwards (`min_side_keep`).

Transforms cannot drop boxes, so the one augmentation that removes objects (the crop keeps only boxes whose
centres fall inside it) is carried out by `DetectionAugInput`, which tracks which input boxes survive.
All randomness comes from numpy's global RNG, as in detectron2: `np.random.seed` makes a run repeatable.
"""
import functools

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, NoOpTransform, PadTransform, TransformList

__all__ = [
    "CV2_INTERPOLATIONS",
    "DetectionAugInput",
    "ExpandTransform",
    "CV2ResizeTransform",
    "PhotometricDistortion",
    "RandomExpand",
    "RandomInterpolationResize",
    "build_augmentation",
    "min_side_keep",
    "plain_resize",
]

# The paper resizes training images with one of these, picked at random per image.
CV2_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)


# ----------------------------------------------------------------------------- transforms
class ExpandTransform(PadTransform):
    """PadTransform whose fill is one value per channel (np.pad only takes one value for all channels)."""

    def apply_image(self, img):
        h, w = img.shape[:2]
        canvas = np.empty((self.y0 + h + self.y1, self.x0 + w + self.x1) + img.shape[2:], dtype=img.dtype)
        canvas[...] = np.asarray(self.pad_value, dtype=img.dtype)
        canvas[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = img
        return canvas


class CV2ResizeTransform(T.ResizeTransform):
    """ResizeTransform with an OpenCV interpolation flag (detectron2's takes PIL's), as the paper resizes."""

    def apply_image(self, img, interp=None):
        assert img.shape[:2] == (self.h, self.w), (img.shape, (self.h, self.w))
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=self.interp if interp is None else interp)
        return out.reshape(out.shape[:2] + img.shape[2:])  # cv2 drops a trailing channel of size 1

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)

    def inverse(self):
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


# ----------------------------------------------------------------------------- photometric ops
# detectron2's RandomBrightness/RandomContrast blend towards black/the image mean; the paper adds a value and
# multiplies, then changes hue and saturation in HSV, so these are written out here.
def _as_input_dtype(out, like):
    out = np.clip(out, 0, 255)
    return np.round(out).astype(like.dtype) if like.dtype == np.uint8 else out.astype(like.dtype)


def shift_brightness(img, delta):
    """Add `delta` to every channel (0-255 scale)."""
    return _as_input_dtype(img.astype(np.float32) + delta, img)


def scale_contrast(img, alpha):
    """Multiply every channel by `alpha`."""
    return _as_input_dtype(img.astype(np.float32) * alpha, img)


def _in_hsv(img, op):
    # Float HSV: hue in degrees [0, 360), saturation in [0, 1] (uint8 HSV quantises hue to 2 degrees).
    hsv = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)
    hsv = op(hsv)
    return _as_input_dtype(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0, img)


def shift_hue(img, degrees):
    """Rotate the hue of a BGR image by `degrees`."""

    def op(hsv):
        hsv[..., 0] = np.mod(hsv[..., 0] + degrees, 360.0)
        return hsv

    return _in_hsv(img, op)


def scale_saturation(img, alpha):
    """Multiply the saturation of a BGR image by `alpha`."""

    def op(hsv):
        hsv[..., 1] = np.clip(hsv[..., 1] * alpha, 0.0, 1.0)
        return hsv

    return _in_hsv(img, op)


class PhotometricDistortion(T.Augmentation):
    """
    Brightness shift (+-`brightness_delta`), contrast scale, hue rotation (+-`hue_degrees`) and saturation
    scale, each applied with probability `prob`. As in SSD, contrast comes either first or last (after hue
    and saturation), chosen at random per image. Returns a TransformList of ColorTransforms (boxes untouched).
    Hue is in degrees; the paper's code adds +-18 to OpenCV's uint8 hue channel, whose unit is 2 degrees.
    """

    def __init__(self, brightness_delta=32.0, contrast=(0.5, 1.5), hue_degrees=18.0, saturation=(0.5, 1.5), prob=0.5):
        self._init(locals())

    def get_transform(self, image):
        def maybe(op, value):
            return [T.ColorTransform(functools.partial(op, **value))] if np.random.rand() < self.prob else []

        tfms = maybe(shift_brightness, {"delta": np.random.uniform(-self.brightness_delta, self.brightness_delta)})
        contrast_first = np.random.rand() < 0.5
        contrast = maybe(scale_contrast, {"alpha": np.random.uniform(*self.contrast)})
        hue = maybe(shift_hue, {"degrees": np.random.uniform(-self.hue_degrees, self.hue_degrees)})
        saturation = maybe(scale_saturation, {"alpha": np.random.uniform(*self.saturation)})
        tfms += contrast + hue + saturation if contrast_first else hue + saturation + contrast
        return TransformList(tfms) if tfms else NoOpTransform()


# ----------------------------------------------------------------------------- geometric augmentations
class RandomExpand(T.Augmentation):
    """
    Zoom out: with probability `prob`, place the image at a random position of a canvas `ratio` times larger
    (ratio uniform in [1, max_ratio]) filled with `fill` (the pixel mean, one value per channel).
    """

    def __init__(self, max_ratio=4.0, fill=(104.0, 117.0, 123.0), prob=0.6):
        self._init(locals())

    def get_transform(self, image):
        if np.random.rand() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = np.random.uniform(1.0, self.max_ratio)
        new_h, new_w = int(h * ratio), int(w * ratio)
        left = int(np.random.uniform(0, new_w - w))
        top = int(np.random.uniform(0, new_h - h))
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
    """The paper's test preprocessing: resize to `size` x `size` with cv2.INTER_LINEAR."""
    return RandomInterpolationResize(size, interps=(cv2.INTER_LINEAR,))


def build_augmentation(cfg, is_train):
    """
    The augmentations of one image: the paper's recipe at train time with INPUT.MG_AUGMENT, else only the
    resize to INPUT.SIZE with cv2.INTER_LINEAR (the paper's test preprocessing).
    """
    size = cfg.INPUT.SIZE
    if not (is_train and cfg.INPUT.MG_AUGMENT):
        return [plain_resize(size)]
    return [
        PhotometricDistortion(),
        RandomExpand(cfg.INPUT.EXPAND_MAX_RATIO, fill=tuple(cfg.MODEL.PIXEL_MEAN), prob=cfg.INPUT.EXPAND_PROB),
        # detectron2's MinIoURandomCrop is SSD's sampler: modes none/0.1/0.3/0.5/0.7/0.9/unconstrained, sides
        # 0.3-1 of the image, aspect 0.5-2, at least one box centre inside. Dropping the other boxes is
        # DetectionAugInput's job.
        T.MinIoURandomCrop(min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3),
        T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
        RandomInterpolationResize(size),
    ]


# ----------------------------------------------------------------------------- boxes through the augmentations
class DetectionAugInput(T.AugInput):
    """
    AugInput whose boxes follow the detection rules of the paper: a CropTransform keeps only the boxes whose
    centres fall strictly inside the crop, and after every transform boxes are clipped to the image.
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
        super().transform(tfm)
        h, w = self.image.shape[:2]
        self.boxes = np.clip(self.boxes.reshape(-1, 4), 0, [w, h, w, h]).astype(np.float32)


def min_side_keep(boxes, image_size, min_side_ratio):
    """
    Mask of the boxes (N x 4 XYXY) kept: the shorter side, relative to the image side along it, must be at
    least `min_side_ratio`; empty boxes are never kept. `image_size` is (height, width).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    h, w = image_size
    rel_w = (boxes[:, 2] - boxes[:, 0]) / w
    rel_h = (boxes[:, 3] - boxes[:, 1]) / h
    return (np.minimum(rel_w, rel_h) >= min_side_ratio) & (rel_w > 0) & (rel_h > 0)
