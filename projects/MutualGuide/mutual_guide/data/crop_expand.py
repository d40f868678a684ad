"""
The crop-or-zoom-out of the authors' code at 108b4a8 (`_crop_expand` in data/data_augment.py), on detectron2's
Augmentation/Transform API; data/augmentation.py assembles it into that code's recipe
(INPUT.MG_AUGMENT_RECIPE "authors_2023").

It works on the square image (their loader resizes every image to S x S first) in units of the image side. With
probability `prob` it draws a window of height h ~ U(0.25, 1.75) and width h * r or h / r (a fair coin), r ~ U(0.5, 1),
centred at (x, y), each ~ U(0.25, 0.75). The part of the window inside the image is cut out and pasted, at the
same place relative to the window, on a canvas of the window's size filled with the mean of the whole image (one
value for all channels): the window may both crop and zoom out. A window is rejected when a box has between 25% and
75% of its area inside it (exclusive), or when no box centre lies strictly inside the image part of it; after 20
rejections the image is left as it is. Boxes whose centre is inside are kept, clipped to the window.

The canvas holds floats (the fill is the exact mean, as theirs); `QuantizeTransform` rounds the final S x S image
back to uint8, which the mapper hands on (theirs stays float: a difference of at most half a grey level).
"""
import math

import numpy as np
from fvcore.transforms.transform import NoOpTransform, Transform

from detectron2.data import transforms as T

__all__ = ["CropExpandTransform", "QuantizeTransform", "RandomCropExpand", "ToUint8"]


class CropExpandTransform(Transform):
    """
    Paste the pixels `src` = (x1, y1, x2, y2) of an H x W image at (dst_x, dst_y) of a canvas_h x canvas_w float32
    canvas filled with the image's mean. Coordinates follow the window (corner_x, corner_y, win_w, win_h), in
    units of the image side: x -> (x / W - corner_x) * canvas_w / win_w, as the authors' normalised boxes are
    relative to the window and the canvas is that window in pixels (rounded up). `roi` (x1, y1, x2, y2, same
    units) is the image part of the window: `kept_boxes` are those whose centre lies strictly inside it.
    """

    def __init__(self, src, dst_x, dst_y, canvas_h, canvas_w, corner_x, corner_y, win_w, win_h, roi, h, w):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        x1, y1, x2, y2 = self.src
        canvas = np.empty((self.canvas_h, self.canvas_w) + img.shape[2:], dtype=np.float32)
        canvas[...] = np.mean(img)  # numpy's mean of the whole image, in float64, as theirs
        canvas[self.dst_y : self.dst_y + y2 - y1, self.dst_x : self.dst_x + x2 - x1] = img[y1:y2, x1:x2]
        return canvas

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] = (coords[:, 0] / self.w - self.corner_x) * self.canvas_w / self.win_w
        coords[:, 1] = (coords[:, 1] / self.h - self.corner_y) * self.canvas_h / self.win_h
        return coords

    def kept_boxes(self, boxes):
        """Mask of the XYXY boxes (pixels of the input) whose centre is strictly inside the image part."""
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0 / np.array([self.w, self.h])
        roi = np.asarray(self.roi)
        return ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1)

    def inverse(self):
        raise NotImplementedError("the authors' crop-and-expand has no inverse (it drops boxes and pixels)")


class RandomCropExpand(T.Augmentation):
    """The draw of the module docstring; the defaults are the authors' (108b4a8)."""

    def __init__(self, scale=(0.25, 1.75), ratio=(0.5, 1.0), shift=(0.25, 0.75), iof=(0.25, 0.75), trials=20,
                 prob=0.75):
        self._init(locals())

    def get_transform(self, image, boxes):
        if np.random.random_sample() > self.prob:
            return NoOpTransform()
        height, width = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / np.array([width, height, width, height])
        for _ in range(self.trials):
            win_h = np.random.uniform(*self.scale)
            if np.random.randint(2):
                win_w = win_h * np.random.uniform(*self.ratio)
            else:
                win_w = win_h / np.random.uniform(*self.ratio)
            centre_y, centre_x = np.random.uniform(*self.shift), np.random.uniform(*self.shift)
            tfm = self.window(boxes, height, width, centre_x, centre_y, win_w, win_h)
            if tfm is not None:
                return tfm
        return NoOpTransform()  # the authors' "Augmentation failed": the image as it is

    def window(self, boxes, height, width, centre_x, centre_y, win_w, win_h):
        """The transform of one drawn window (boxes normalised to the image side), or None when the authors' rules
        reject it."""
        corner_y, corner_x = centre_y - win_h / 2, centre_x - win_w / 2
        roi = np.array([max(0.0, corner_x), max(0.0, corner_y), min(1.0, corner_x + win_w), min(1.0, corner_y + win_h)])
        lt, rb = np.maximum(boxes[:, :2], roi[:2]), np.minimum(boxes[:, 2:], roi[2:])
        with np.errstate(divide="ignore", invalid="ignore"):  # a box without area gives NaN: never rejects, as theirs
            inside = np.prod(rb - lt, axis=1) * (lt < rb).all(axis=1) / np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        if ((inside > self.iof[0]) & (inside < self.iof[1])).any():
            return None
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        if not ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1).any():
            return None
        x1, y1, x2, y2 = int(roi[0] * width), int(roi[1] * height), int(roi[2] * width), int(roi[3] * height)
        return CropExpandTransform(
            (x1, y1, x2, y2), int(max(0.0, -corner_x) * width), int(max(0.0, -corner_y) * height),
            math.ceil(height * win_h), math.ceil(width * win_w), corner_x, corner_y, win_w, win_h, tuple(roi),
            height, width,
        )


class QuantizeTransform(Transform):
    """A float image rounded (half to even) and clipped to uint8; a uint8 image as it is. Coordinates unchanged."""

    def apply_image(self, img):
        if img.dtype == np.uint8:
            return img
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def apply_coords(self, coords):
        return coords

    def inverse(self):
        return NoOpTransform()


class ToUint8(T.Augmentation):
    """The last step of the authors' 2023 recipe here: the image back to uint8 (QuantizeTransform)."""

    def get_transform(self, image):
        return QuantizeTransform()
