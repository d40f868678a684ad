"""
Mutual guidance as the authors' code at 108b4a8 does it (`mutual_match` in utils/box/box_utils.py): each object
takes a dynamic number of positives, and the qualities that chose them become soft weights of the losses.

Selected by MODEL.MUTUAL_GUIDE.RECIPE "authors_2023" (docs/recipe_2023.md); the paper's rule (fd2c4cc) is
`assignment.MutualGuidanceMatcher`. The IoU baseline of that code is the paper's (`BestAnchorIoUMatcher`).
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mutual_guide.modeling.assignment import (
    AnchorMatcher,
    _best_box_per_anchor,
    _box_counts,
    _segments,
    batched_pairwise_iou,
    top_k_lower_index_first,
)

__all__ = ["DynamicMutualGuidanceMatcher", "SoftAnchorLabels"]

# Added to the quality of a positive; every quality is in [0, 1], so a positive outranks any other entry.
_POSITIVE_SHIFT = 3.0


class SoftAnchorLabels(NamedTuple):
    """
    `AnchorLabels`' fields (same meaning: what the assignment statistics and the training-sample drawings read)
    and the soft weights, all [N, A]. No anchor is ignored: `ignored_class` is C everywhere.

    cls_weight: float32, at a classification positive the quality that chose it (the soft target of its class
        score), 0 elsewhere. A positive whose weight rounds to 0 trains as a negative, as in the authors' code.
    reg_weight: float32, at a regression positive its quality (its weight in the box losses), 0 elsewhere.
    """

    cls_labels: Tensor
    reg_mask: Tensor
    reg_idx: Tensor
    cls_idx: Tensor
    ignored_class: Tensor
    cls_weight: Tensor
    reg_weight: Tensor


class DynamicMutualGuidanceMatcher(AnchorMatcher):
    """
    The authors' 2023 mutual guidance, on two G x A quality matrices per image:

        cls_quality[g, a] = IoU(box g, box predicted at anchor a)                       (localize to classify)
        reg_quality[g, a] = min(1, IoU(box g, anchor a) * exp(p[g, a] / sigma))          (classify to localize)

    p[g, a] the predicted probability of g's class at a. In each matrix, separately:

    1. each anchor column keeps the entries equal to its maximum over the image's boxes, the rest is set to 0
       (no best anchor is forced, unlike the paper's rule);
    2. box g takes n(g) = min(max(1, floor(s(g))), #(row g > 0)) positives, s(g) the sum of its `topk` largest
       kept qualities: the n(g) anchors of highest kept quality (equal qualities: lower anchor index first);
    3. each anchor goes to the box of highest quality + 3 if positive (lower box index on ties), and is a
       positive of that task when it is one of that box's; its soft weight is (quality + 3) - 3 in float32, the
       authors' arithmetic (the quality rounded to the float32 grid of [3, 4), within 1.2e-7).

    There are no ignored anchors. An image without boxes is all negative (the authors' code cannot take one).
    Equal column maxima stay with every box that has them: each may count and choose the anchor, which goes to
    the lowest of them. Batched as `MutualGuidanceMatcher`: the batch's boxes stacked ([T, A]), no host read.
    """

    uses_predictions = True

    def __init__(self, num_classes: int, topk: int = 15, sigma: float = 2.0):
        """
        Args:
            num_classes: C, object classes without background; C is the background value of `cls_labels`.
            topk: the number of qualities summed into an object's number of positives (their `topk`, 15).
            sigma: temperature of the class score in the regression quality (their `sigma`, 2.0).
        """
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.num_classes, self.topk, self.sigma = num_classes, int(topk), float(sigma)

    def __repr__(self):
        return f"{type(self).__name__}(num_classes={self.num_classes}, topk={self.topk}, sigma={self.sigma})"

    def __call__(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_classes: Tensor,
        valid: Tensor,
        pred_boxes: Optional[Tensor] = None,
        pred_logits: Optional[Tensor] = None,
        counts: Optional[Sequence[int]] = None,
    ) -> SoftAnchorLabels:
        """Arguments as `AnchorMatcher.__call__`. Computed in float32 without gradient."""
        if pred_boxes is None or pred_logits is None:
            raise ValueError("mutual guidance needs pred_boxes and pred_logits")
        if pred_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits have {pred_logits.shape[-1]} classes, the matcher was built for {self.num_classes}"
            )
        with torch.no_grad(), torch.autocast(anchors.device.type, enabled=False):
            counts = _box_counts(valid, counts)
            cls_quality, reg_quality = self.qualities(
                anchors.float(), gt_boxes.float(), gt_classes, pred_boxes, pred_logits, counts
            )
            cls_idx, cls_weight, cls_pos, reg_idx, reg_weight, reg_pos = self.match(cls_quality, reg_quality, counts)
            num_classes = self.num_classes
            if gt_classes.shape[1] == 0:
                matched_classes = torch.full_like(cls_idx, num_classes)
            else:
                matched_classes = gt_classes.gather(1, cls_idx)
            background = torch.full_like(matched_classes, num_classes)
            return SoftAnchorLabels(
                cls_labels=torch.where(cls_pos, matched_classes, background),
                reg_mask=reg_pos,
                reg_idx=reg_idx,
                cls_idx=cls_idx,
                ignored_class=background,
                cls_weight=cls_weight,
                reg_weight=reg_weight,
            )

    def qualities(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_classes: Tensor,
        pred_boxes: Tensor,
        pred_logits: Tensor,
        counts: List[int],
    ) -> Tuple[Tensor, Tensor]:
        """The two [T, A] float32 quality matrices of the class docstring, the boxes of each image in turn."""
        boxes = torch.cat([gt_boxes[i, :c] for i, c in enumerate(counts)] + [gt_boxes.new_zeros(0, 4)])
        classes = torch.cat([gt_classes[i, :c] for i, c in enumerate(counts)] + [gt_classes.new_zeros(0)])
        anchor_iou = batched_pairwise_iou(boxes.unsqueeze(0), anchors)[0]  # [T, A]
        pred_iou = torch.empty_like(anchor_iou)
        score = torch.empty_like(anchor_iou)
        for i, (start, end) in enumerate(_segments(counts)):
            if end > start:
                image_boxes = boxes[None, start:end]
                batched_pairwise_iou(image_boxes, pred_boxes[i].detach().float(), out=pred_iou[None, start:end])
                score[start:end] = pred_logits[i].detach().t().index_select(0, classes[start:end]).float()
        # the authors' order: sigmoid, divided by sigma, exp, times the anchor IoU, capped at 1
        reg_quality = score.sigmoid_().div_(self.sigma).exp_().mul_(anchor_iou).clamp_(max=1.0)
        return pred_iou, reg_quality

    def match(
        self, cls_quality: Tensor, reg_quality: Tensor, counts: Sequence[int]
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            cls_quality, reg_quality: [T, A] float32 qualities in [0, 1] (+0.0 for none), image after image
                (`counts` boxes each). Overwritten.
        Returns:
            for classification then regression: box index [N, A] long (within the image), soft weight [N, A]
            float32 (0 off the positives), positive [N, A] bool.
        """
        segments = _segments(counts)
        out = []
        for quality in (cls_quality, reg_quality):
            _shift_dynamic_positives_(quality, segments, self.topk)
            best, index = _best_box_per_anchor(quality, segments)
            out += [index, (best - _POSITIVE_SHIFT).relu_(), best >= _POSITIVE_SHIFT]
        return tuple(out)


def _shift_dynamic_positives_(quality: Tensor, segments: List[Tuple[int, int]], topk: int) -> Tensor:
    """
    In place on [T, A]: within each image, entries below their column's maximum set to 0; then each row's
    n = min(max(1, floor(sum of its `topk` largest)), #(row > 0)) largest entries (lower index first among equal
    ones) increased by 3.
    """
    if quality.shape[0] == 0:
        return quality
    for start, end in segments:
        if end > start:
            block = quality[start:end]
            block.masked_fill_(block != block.amax(dim=0, keepdim=True), 0.0)
    k = min(topk, quality.shape[-1])
    top = top_k_lower_index_first(quality, k)  # [T, k], best first
    values = quality.gather(1, top)
    # float32 sum truncated to an integer (`.int()`), at least 1, at most the row's nonzero entries; at most k
    num_pos = values.sum(-1).to(torch.int32).clamp_(min=1)
    num_pos = torch.minimum(num_pos, (quality > 0).sum(-1, dtype=torch.int32))
    rank = torch.arange(k, device=quality.device)
    values = torch.where(rank < num_pos.unsqueeze(-1), values + _POSITIVE_SHIFT, values)
    return quality.scatter_(1, top, values)
