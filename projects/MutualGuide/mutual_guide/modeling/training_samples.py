"""
The anchors each task trains on, drawn for TensorBoard every VIS_PERIOD iterations (detectron2's key).

A few images of the step's batch, as the network received them (after augmentation and the resize to S x S),
with their ground truth and the step's own `AnchorLabels`: the classification positives (anchors whose
*predicted* box fits an object best, "localize to classify"), the regression positives (anchors whose class score
weighted by anchor IoU is best, "classify to localize") and the ignored anchors. Nothing is assigned a second time.

The images go to detectron2's EventStorage (`put_image`), which its TensorboardXWriter writes to the event file
of OUTPUT_DIR: `tensorboard --logdir OUTPUT_DIR`, tab "Images", tags `training_samples/<k>`.
"""
import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.utils.visualizer import Visualizer

from mutual_guide.modeling.assignment import AnchorLabels
from mutual_guide.modeling.batching import GroundTruth
from mutual_guide.utils.detectron2_compat import set_visualizer_font_size

__all__ = ["MAX_IMAGES", "draw_training_sample", "put_training_samples", "training_class_names"]

MAX_IMAGES = 4  # images of a batch drawn each time: enough to see the rule at work, few enough to keep events small
MIN_DRAWING_WIDTH = 512  # as drawing.py: the image is enlarged by a whole factor to at least this width
_FONT_PX = 13
# One colour per kind of anchor (matplotlib names), said in the legend drawn above the image.
GT_COLOUR, CLS_COLOUR, REG_COLOUR, IGNORED_COLOUR = "white", "lime", "orange", "yellow"


def training_class_names(cfg) -> Sequence[str]:
    """Class names of the first training dataset's metadata (the labels of the drawn ground truth), or ()."""
    if cfg.VIS_PERIOD <= 0 or not cfg.DATASETS.TRAIN:
        return ()
    return tuple(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes", None) or ())


def draw_training_sample(
    image_rgb: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: Sequence[int],
    anchors: np.ndarray,
    cls_positive: np.ndarray,
    reg_positive: np.ndarray,
    ignored: np.ndarray,
    class_names: Sequence[str] = (),
) -> np.ndarray:
    """
    One training image with what each task trains on, as an RGB uint8 drawing [H', W', 3].

    Args:
        image_rgb: [S, S, 3] uint8, the network's input de-normalised.
        gt_boxes, gt_classes: [G, 4] XYXY in the image's pixels and their class ids.
        anchors: [A, 4] XYXY in the image's pixels.
        cls_positive, reg_positive, ignored: [A] bool masks.
        class_names: names of the class ids (the ids themselves when empty).

    The image is enlarged by a whole factor (nearest neighbour: the pixels the network saw) to at least
    MIN_DRAWING_WIDTH; a legend band above it names each mark with its count. Classification positives are
    solid anchor boxes, regression positives dashed ones (an anchor that is both shows both), ignored anchors a
    dot at their centre (the six anchors of a location share it), ground truth thick boxes with class names.
    """
    height, width = image_rgb.shape[:2]
    scale = max(1, math.ceil(MIN_DRAWING_WIDTH / width))
    image = cv2.resize(image_rgb, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
    band = 4 * round(_FONT_PX * 1.6) + 8  # the legend's four lines
    canvas = np.zeros((image.shape[0] + band, image.shape[1], 3), dtype=np.uint8)
    canvas[band:] = image
    offset = np.array([0, band, 0, band], dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.float64) * scale + offset
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4) * scale + offset

    vis = Visualizer(canvas, None, scale=1.0)
    set_visualizer_font_size(vis, 4)  # draw_box's line width is a quarter of it: 1 px anchor outlines
    centres = (anchors[ignored, :2] + anchors[ignored, 2:]) / 2
    for x, y in np.unique(np.round(centres, 1), axis=0):
        vis.draw_circle((x, y), color=IGNORED_COLOUR, radius=max(2, scale // 2))
    for box in anchors[cls_positive]:
        vis.draw_box(box, alpha=0.9, edge_color=CLS_COLOUR, line_style="-")
    for box in anchors[reg_positive]:
        vis.draw_box(box, alpha=0.9, edge_color=REG_COLOUR, line_style="--")
    set_visualizer_font_size(vis, 12)  # 3 px ground-truth outlines
    for box, c in zip(gt_boxes, gt_classes):
        vis.draw_box(box, alpha=1.0, edge_color=GT_COLOUR)
        name = class_names[c] if 0 <= c < len(class_names) else str(int(c))
        vis.draw_text(name, (box[0] + 2, box[1] + 1), font_size=_FONT_PX, color=GT_COLOUR,
                      horizontal_alignment="left")

    lines = [
        (f"ground truth: {len(gt_boxes)} (white boxes)", GT_COLOUR),
        (f"classification positives: {int(cls_positive.sum())} (green boxes)", CLS_COLOUR),
        (f"regression positives: {int(reg_positive.sum())} (orange dashed boxes)", REG_COLOUR),
        (f"ignored: {int(ignored.sum())} (yellow dots, one per location)", IGNORED_COLOUR),
    ]
    for row, (text, colour) in enumerate(lines):
        vis.draw_text(text, (4, 4 + row * round(_FONT_PX * 1.6)), font_size=_FONT_PX, color=colour,
                      horizontal_alignment="left")
    return vis.output.get_image()


def put_training_samples(
    storage,
    images: Tensor,
    pixel_mean: Tensor,
    pixel_std: Tensor,
    gt: GroundTruth,
    labels: AnchorLabels,
    anchors: Tensor,
    num_classes: int,
    class_names: Sequence[str] = (),
    max_images: Optional[int] = MAX_IMAGES,
) -> None:
    """
    Draw the first `max_images` images of the step (`draw_training_sample`) into `storage` as
    `training_samples/<k>`, CHW uint8 RGB as `EventStorage.put_image` wants. Only the main process draws (only
    its writers write). Reads the device tensors once, on the iterations it is called at.

    Args:
        images: [N, 3, S, S] the network's normalised BGR input; `pixel_mean`/`pixel_std` undo the normalisation.
        gt: the step's padded ground truth in the S x S frame; labels: the step's `AnchorLabels`.
        anchors: [A, 4] XYXY pixels of the S x S input, in the order of `labels`.
    """
    if not comm.is_main_process():
        return
    k = len(images) if max_images is None else min(len(images), max_images)
    with torch.no_grad():
        bgr = (images[:k].float() * pixel_std.float() + pixel_mean.float()).clamp_(0, 255).round_()
        rgb = bgr.flip(1).permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()
    cls_labels = labels.cls_labels[:k].cpu()
    cls_positive = ((cls_labels >= 0) & (cls_labels < num_classes)).numpy()
    ignored = (cls_labels == -1).numpy()
    reg_positive = labels.reg_mask[:k].cpu().numpy()
    valid = gt.valid[:k].cpu()
    boxes, classes = gt.boxes[:k].cpu(), gt.classes[:k].cpu()
    anchors = anchors.detach().cpu().numpy()
    for i in range(k):
        drawing = draw_training_sample(
            rgb[i], boxes[i][valid[i]].numpy(), classes[i][valid[i]].tolist(), anchors,
            cls_positive[i], reg_positive[i], ignored[i], class_names,
        )
        storage.put_image(f"training_samples/{i}", drawing.transpose(2, 0, 1))
