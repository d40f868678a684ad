"""
Drawing boxes with detectron2's Visualizer at a size where a person reads the labels: one helper for
demo.py, the evaluation's TEST.DRAW (evaluation/drawer.py) and tools/browse_dataset.py.

A drawing is at least `min_width` (512) pixels wide: smaller images are enlarged by the Visualizer's own
scale. Its longest side is at most MAX_DRAWING_SIDE (2048) pixels: larger images are reduced with
cv2.INTER_AREA first, because matplotlib renders the Visualizer's canvas through float64 copies, about 110
bytes per pixel of the drawing (measured: 0.47 GB at 2048 x 2048, 1.8 GB at 4096 x 4096; a 12000 x 12000
photo drawn whole would need some 16 GB). Labels start at 14 points on the drawing and grow with their box
(the Visualizer draws them at 0.6 to 1 times its base size).
"""

import cv2
import numpy as np
import torch

from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

from mutual_guide.utils.detectron2_compat import set_visualizer_font_size, visualizer_font_size

__all__ = ["MAX_DRAWING_SIDE", "PALETTE", "above_threshold", "class_labels", "draw_boxes", "draw_predictions", "place_labels"]

MAX_DRAWING_SIDE = 2048
MIN_DRAWING_WIDTH = 512
_LABEL_POINTS = 14  # base label size on the drawing; the Visualizer's own shrinks to 8 points on enlarged images
PALETTE = colormap(rgb=True, maximum=1)  # detectron2's 74 distinct colours, one per class id


def class_labels(classes, metadata, scores=None):
    """'name' (or 'name 87%' with scores) of each class id; the id itself when the metadata has no names."""
    names = metadata.get("thing_classes", None) if metadata is not None else None
    labels = [names[c] if names is not None and 0 <= c < len(names) else str(c) for c in classes]
    if scores is not None:
        labels = [f"{label} {score * 100:.0f}%" for label, score in zip(labels, scores)]
    return labels


def _within_max_side(image, boxes):
    """(image, XYXY boxes) reduced to MAX_DRAWING_SIDE pixels on the longest side when larger."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = image.shape[:2]
    if max(height, width) <= MAX_DRAWING_SIDE:
        return image, boxes
    shrink = MAX_DRAWING_SIDE / max(height, width)
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    boxes = boxes * np.array([size[0] / width, size[1] / height] * 2)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), boxes


def place_labels(boxes, sizes, width, height, taken=()):
    """
    Where each label goes: the top-left corner of a `sizes[i]` (w, h) rectangle for box i (XYXY), in the order
    given (the most important first). Each takes the first of: above the box, inside its top, below it (left
    edge, then right edge) that covers neither a label placed before it, nor another box, nor `taken` (e.g. a
    note); else the one that covers the least of the labels (a label over a label cannot be read), then of the
    rest (a label over another box is only ambiguous). Every rectangle is moved inside the `width` x `height` image.
    """
    placed = []
    corners = []
    for i, ((x0, y0, x1, y1), (w, h)) in enumerate(zip(boxes, sizes)):
        others = [tuple(b) for j, b in enumerate(boxes) if j != i] + [tuple(r) for r in taken]
        best = None
        for x, y in ((x0, y0 - h), (x0, y0), (x0, y1), (x1 - w, y0 - h), (x1 - w, y0), (x1 - w, y1)):
            x = min(max(x, 0.0), max(width - w, 0.0))
            y = min(max(y, 0.0), max(height - h, 0.0))
            rect = (x, y, x + w, y + h)
            cost = (sum(_overlap(rect, r) for r in placed), sum(_overlap(rect, b) for b in others))
            if best is None or cost < best[0]:
                best = (cost, x, y)
            if cost == (0, 0):
                break
        _, x, y = best
        placed.append((x, y, x + w, y + h))
        corners.append((x, y))
    return corners


def _overlap(a, b):
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _label_size(text, points, visualizer):
    """(w, h) of a label in the image's pixels: matplotlib's point is dpi / 72 output pixels, scale of them per image
    pixel; a sans-serif character is about 0.6 of the size wide, and the box around it adds 0.7 of it each side."""
    pixels = points * visualizer.output.dpi / 72.0
    return (0.6 * len(text) + 1.4) * pixels, 2.4 * pixels


def draw_boxes(image_rgb, boxes, classes, metadata, labels=None, min_width=MIN_DRAWING_WIDTH, note=None):
    """
    The XYXY boxes (the image's pixels) with their labels (default: the class names of `metadata`), one
    colour per class, on an RGB image; returns the RGB drawing, sized as the module docstring says. Labels are
    placed apart from each other and inside the image (`place_labels`), in the order of the boxes; `note`, if
    given, is written in the top-left corner.
    """
    classes = [int(c) for c in classes]
    image_rgb, boxes = _within_max_side(image_rgb, boxes)
    height, width = image_rgb.shape[:2]
    # enlarged to min_width, unless a very narrow image would then pass MAX_DRAWING_SIDE in height
    scale = max(1.0, min(min_width / width, MAX_DRAWING_SIDE / max(height, width)))
    visualizer = Visualizer(image_rgb, metadata, scale=scale)
    # The Visualizer's base font, in the image's pixels, is max(sqrt(H * W) // 90, 10 // scale): it shrinks as
    # the scale grows, to 8 points on a 128-pixel image drawn 4x. At least 14 points on the drawing instead.
    points = max(visualizer_font_size(visualizer), _LABEL_POINTS / scale)
    set_visualizer_font_size(visualizer, points)
    labels = class_labels(classes, metadata) if labels is None else labels
    colours = [PALETTE[c % len(PALETTE)] for c in classes]
    visualizer.overlay_instances(boxes=boxes, assigned_colors=colours)
    taken = []
    if note:
        w, h = _label_size(note, points, visualizer)
        visualizer.draw_text(note, (0, 0), font_size=points, color="w", horizontal_alignment="left")
        taken.append((0, 0, w, h))
    sizes = [_label_size(label, points, visualizer) for label in labels]
    for label, colour, (x, y) in zip(labels, colours, place_labels(boxes, sizes, width, height, taken)):
        visualizer.draw_text(label, (x, y), font_size=points, color=colour, horizontal_alignment="left")
    return visualizer.output.get_image()


def above_threshold(instances, score_thresh):
    """The predictions scoring at least `score_thresh`: one number, or one per class (a sequence indexed by class)."""
    if isinstance(score_thresh, (int, float)):
        return instances[instances.scores >= score_thresh]
    per_class = torch.as_tensor(list(score_thresh), dtype=instances.scores.dtype, device=instances.scores.device)
    return instances[instances.scores >= per_class[instances.pred_classes]]


def draw_predictions(image_bgr, instances, metadata, score_thresh, min_width=MIN_DRAWING_WIDTH, note=None):
    """
    Draw the predictions scoring at least `score_thresh` (one number, or one per class) on a BGR image, labelled "class 87%", the best first;
    returns the BGR drawing (sized as the module docstring says). Class names come from
    `metadata.thing_classes`. `note` (e.g. how the threshold was chosen) goes in the top-left corner.
    """
    instances = above_threshold(instances.to("cpu"), score_thresh)
    instances = instances[instances.scores.argsort(descending=True)]
    classes = instances.pred_classes.tolist()
    labels = class_labels(classes, metadata, instances.scores.tolist())
    # reduced before the channels are swapped: cv2 copies a reversed-channel view of the full image first
    image_bgr, boxes = _within_max_side(image_bgr, instances.pred_boxes.tensor.numpy())
    drawn = draw_boxes(image_bgr[:, :, ::-1], boxes, classes, metadata, labels, min_width, note)
    return np.ascontiguousarray(drawn[:, :, ::-1])
