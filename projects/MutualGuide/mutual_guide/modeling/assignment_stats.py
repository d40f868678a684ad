"""
What the assignment gave each object in one training step, from the step's own labels (`AnchorLabels`): how many
classification positives and regression positives each object got, how much the two sets overlap, and how many
objects got none, by object size. Computed on the device, with no read-back: the detector hands the values to
the EventStorage in the background (utils/events.py), every MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD iterations
(0: never, and nothing is computed).

Sizes are COCO's areas (small < 32^2, medium < 96^2, large) measured in the network's S x S input, where the
anchors are: a box's size there is what decides which anchors can fit it.
"""
from typing import List, Tuple

import torch
from torch import Tensor

from mutual_guide.modeling.assignment import AnchorLabels

__all__ = ["SIZE_BINS", "STATISTICS", "assignment_statistics", "statistic_names"]

SIZE_BINS = ("all", "small", "medium", "large")
_SMALL, _MEDIUM = 32.0**2, 96.0**2
# per size bin, in this order (names: assignment/<bin>/<statistic>)
STATISTICS = (
    "objects",  # objects of that size in the batch
    "cls_positives_per_object",  # mean classification positives an object got
    "reg_positives_per_object",  # mean regression positives an object got
    "both_share",  # share of an object's regression positives that are also its classification positives
    "objects_without_cls",  # share of the objects with no classification positive
    "objects_without_reg",  # share of the objects with no regression positive
)


def statistic_names() -> List[str]:
    return [f"assignment/{size}/{name}" for size in SIZE_BINS for name in STATISTICS]


def assignment_statistics(labels: AnchorLabels, gt_boxes: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """
    The values of `statistic_names()`, one float32 tensor on the labels' device (NaN where a size has no object).

    Args:
        labels: the step's AnchorLabels ([N, A] each).
        gt_boxes: [N, G, 4] XYXY in the S x S input; valid: [N, G] (False on padding).
        num_classes: C; classification positives are the anchors labelled in [0, C).
    """
    n, g = valid.shape
    device = valid.device
    per_object = torch.zeros(3, n * g, device=device)  # classification, regression, both
    if g:
        image = torch.arange(n, device=device).unsqueeze(1).expand_as(labels.cls_labels)
        cls_pos = (labels.cls_labels >= 0) & (labels.cls_labels < num_classes)
        reg_pos = labels.reg_mask
        both = cls_pos & reg_pos & (labels.cls_idx == labels.reg_idx)
        for row, (mask, idx) in enumerate(((cls_pos, labels.cls_idx), (reg_pos, labels.reg_idx), (both, labels.reg_idx))):
            flat = (image * g + idx.clamp(0, g - 1))[mask]
            per_object[row].index_add_(0, flat, torch.ones_like(flat, dtype=per_object.dtype))
    wh = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=0).reshape(n * g, 2)
    area = wh[:, 0] * wh[:, 1]
    valid = valid.reshape(n * g)
    bins = [valid, valid & (area < _SMALL), valid & (area >= _SMALL) & (area < _MEDIUM), valid & (area >= _MEDIUM)]
    values = []
    for members in bins:
        weight = members.to(per_object.dtype)
        objects = weight.sum()
        cls_count, reg_count, both_count = (per_object * weight).sum(dim=1)
        values += [
            objects,
            cls_count / objects,
            reg_count / objects,
            both_count / reg_count,
            ((per_object[0] == 0).to(weight.dtype) * weight).sum() / objects,
            ((per_object[1] == 0).to(weight.dtype) * weight).sum() / objects,
        ]
    return torch.stack(values).float()
