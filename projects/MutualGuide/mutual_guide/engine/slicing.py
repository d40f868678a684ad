"""
Sliced inference for images much larger than the network's input (aerial tiles, shelves of several thousand
pixels whose 10-30 px objects vanish when squashed to INPUT.SIZE): detect on overlapping tiles of TILE_SIZE
pixels, each through the test-time transform and the model, shift the boxes back to the image, optionally add a
pass on the whole image, and merge everything once.

The merge, and why:
1. A tile's box that reaches (within `BORDER_MARGIN` pixels) a tile border lying inside the image is dropped.
   Such a box is an object cut by the border (the detector's boxes are clipped to the tile, so a cut object's
   box ends on the border) or a whole object touching it. The tiles are laid out so that consecutive ones share
   at least OVERLAP x TILE_SIZE pixels along each axis, so every object no larger than that shared strip (minus
   the margin) lies whole and clear of the inner borders in some tile: it comes out whole from there, never as a
   half. Keeping the cut boxes and merging by intersection-over-smaller-area instead would let a half that scores
   higher than the whole object win, and would also merge genuinely nested objects of one class.
2. Objects larger than the shared strip are cut in every tile that holds them: they are left to the
   whole-image pass (TEST.SLICE.WHOLE_IMAGE), which sees large objects at the scale the network is good at.
   Without it, such objects are lost: turn it off only when every object is smaller than the overlap.
3. Objects seen whole by two tiles (in the shared strip), and by the whole-image pass, are the same object more
   than once: one class-wise NMS (detectron2's batched_nms, IoU TEST.SLICE.NMS_THRESH) over all the kept boxes
   keeps the best-scored, then the TEST.DETECTIONS_PER_IMAGE best.

`SlicedDetector` wraps a model for the predictor (demo.py) and for evaluation (Trainer.test with
TEST.SLICE.ENABLED, whose test loader then reads images at full resolution).
"""
import math

import numpy as np
import torch
from torch import nn

from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

__all__ = ["BORDER_MARGIN", "SlicedDetector", "axis_starts", "drop_boxes_on_inner_borders", "merge_detections", "tile_layout"]


# Pixels (of the image) from an inner tile border within which a tile's box counts as touching it: boxes of cut
# objects end on the border exactly once clipped, a pixel or two of slack covers the rounding of the resize back.
BORDER_MARGIN = 2.0
# A progress bar (tqdm) for images of at least this many tiles, when the wrapper is asked for one.
PROGRESS_MIN_TILES = 16


def axis_starts(length, tile, overlap):
    """
    Start coordinates of tiles of side `tile` covering [0, length) along one axis, consecutive tiles sharing at
    least `overlap * tile` pixels: evenly spaced from 0 to length - tile, so the last tile ends at the image's
    edge and none leaves the image. One tile at 0 (of side `length`) when the image is no larger than a tile.
    """
    if length <= tile:
        return [0]
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_layout(height, width, tile, overlap):
    """Tiles covering a height x width image: a list of (x0, y0, x1, y1) in pixels, row by row."""
    if tile <= 0:
        raise ValueError(f"TEST.SLICE.TILE_SIZE must give a positive tile side, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"TEST.SLICE.OVERLAP must be in [0, 1), got {overlap}")
    tile_h, tile_w = min(tile, height), min(tile, width)
    return [
        (x0, y0, x0 + tile_w, y0 + tile_h)
        for y0 in axis_starts(height, tile, overlap)
        for x0 in axis_starts(width, tile, overlap)
    ]


def drop_boxes_on_inner_borders(boxes, tile, height, width, margin=BORDER_MARGIN):
    """
    Which of a tile's boxes (N x 4 XYXY tensor, in image pixels) to keep: False for those within `margin` of a
    border of `tile` (x0, y0, x1, y1) that lies inside the height x width image (rule 1 of the module docstring).
    """
    x0, y0, x1, y1 = tile
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        keep &= boxes[:, 0] > x0 + margin
    if y0 > 0:
        keep &= boxes[:, 1] > y0 + margin
    if x1 < width:
        keep &= boxes[:, 2] < x1 - margin
    if y1 < height:
        keep &= boxes[:, 3] < y1 - margin
    return keep


def merge_detections(parts, image_size, nms_thresh, max_detections):
    """
    One Instances of `image_size` (height, width) from several (pred_boxes, scores, pred_classes) Instances already
    in the image's pixels: class-wise NMS over all of them, the `max_detections` best scored kept.
    """
    boxes = torch.cat([p.pred_boxes.tensor for p in parts])
    scores = torch.cat([p.scores for p in parts])
    classes = torch.cat([p.pred_classes for p in parts])
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_detections]  # sorted by decreasing score
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep]
    result.pred_classes = classes[keep]
    return result


def _shifted(instances, dx, dy, image_size):
    """The tile's Instances as image-pixel Instances of `image_size`: boxes moved by (dx, dy)."""
    out = Instances(image_size)
    out.pred_boxes = Boxes(instances.pred_boxes.tensor + instances.pred_boxes.tensor.new_tensor([dx, dy, dx, dy]))
    out.scores = instances.scores
    out.pred_classes = instances.pred_classes
    return out


class SlicedDetector(nn.Module):
    """
    A detector run on overlapping tiles (and optionally the whole image), merged as the module docstring says.
    Called like a detectron2 model at test time: a list of dicts, each with "image" (C x H x W uint8 tensor of the
    full-resolution image, in INPUT.FORMAT) and optionally "height"/"width" (the size to return boxes in, when
    the image was read at another); returns [{"instances": Instances}] with boxes in those pixels.
    """

    def __init__(self, model, transform, *, tile_size, overlap, whole_image, nms_thresh, max_detections,
                 tiles_per_batch=8, progress=False):
        """
        Args:
            model: the detector; takes [{"image", "height", "width"}] with images as `transform` gives them, and
                returns boxes in "height" x "width" pixels (detectron2's detector_postprocess).
            transform: H x W x C uint8 array -> the array the model takes (data.mapper.build_test_transform).
            tile_size: the side of the tiles, in the image's pixels.
            overlap: the fraction of `tile_size` that consecutive tiles share, at least.
            whole_image: add the model's detections on the whole image (for objects larger than the overlap).
            nms_thresh: IoU of the class-wise NMS that merges the tiles' detections.
            max_detections: detections kept per image, best scores first.
            tiles_per_batch: tiles given to the model at once.
            progress: a tqdm bar over the tiles of images with PROGRESS_MIN_TILES tiles or more.
        """
        super().__init__()
        self.model = model
        self.transform = transform
        self.tile_size = tile_size
        self.overlap = overlap
        self.whole_image = whole_image
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections
        self.tiles_per_batch = max(1, tiles_per_batch)
        self.progress = progress

    @classmethod
    def from_config(cls, cfg, model, transform, progress=False):
        """The wrapper with TEST.SLICE's values (TILE_SIZE 0: INPUT.SIZE)."""
        s = cfg.TEST.SLICE
        return cls(
            model,
            transform,
            tile_size=s.TILE_SIZE or cfg.INPUT.SIZE,
            overlap=s.OVERLAP,
            whole_image=s.WHOLE_IMAGE,
            nms_thresh=s.NMS_THRESH,
            max_detections=cfg.TEST.DETECTIONS_PER_IMAGE,
            tiles_per_batch=cfg.TEST.IMS_PER_BATCH,
            progress=progress,
        )

    def _model_input(self, array):
        height, width = array.shape[:2]
        image = self.transform(array)
        return {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": height,
                "width": width}

    @torch.no_grad()
    def detect(self, image):
        """Instances of one H x W x C uint8 array, boxes in its pixels."""
        height, width = image.shape[:2]
        tiles = tile_layout(height, width, self.tile_size, self.overlap)
        parts = []
        bar = None
        if self.progress and len(tiles) >= PROGRESS_MIN_TILES:
            from tqdm import tqdm

            bar = tqdm(total=len(tiles), desc=f"tiles of {width} x {height}", unit="tile", leave=False)
        for start in range(0, len(tiles), self.tiles_per_batch):
            batch = tiles[start:start + self.tiles_per_batch]
            inputs = [self._model_input(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in batch]
            for tile, output in zip(batch, self.model(inputs)):
                found = _shifted(output["instances"], tile[0], tile[1], (height, width))
                parts.append(found[drop_boxes_on_inner_borders(found.pred_boxes.tensor, tile, height, width)])
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        if self.whole_image and len(tiles) > 1:  # with one tile, the tile is the whole image
            parts.append(self.model([self._model_input(image)])[0]["instances"])
        return merge_detections(parts, (height, width), self.nms_thresh, self.max_detections)

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError("SlicedDetector is for inference; train the detector it wraps")
        results = []
        for inputs in batched_inputs:
            image = inputs["image"].permute(1, 2, 0).cpu().numpy()
            instances = self.detect(image)
            height, width = inputs.get("height", image.shape[0]), inputs.get("width", image.shape[1])
            if (height, width) != image.shape[:2]:
                scale = instances.pred_boxes.tensor.new_tensor(
                    [width / image.shape[1], height / image.shape[0]] * 2
                )
                resized = Instances((height, width), **instances.get_fields())
                resized.pred_boxes = Boxes(instances.pred_boxes.tensor * scale)
                instances = resized
            results.append({"instances": instances})
        return results
