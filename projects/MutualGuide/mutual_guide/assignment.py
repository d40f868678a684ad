"""
Anchor assignment: which anchors each task learns from, and which box each of them learns.

Two matchers, both batched over images and boxes (ground truth padded to [N, G, 4] with a validity mask):

* `BestAnchorIoUMatcher`, the baseline: detectron2's `Matcher` on anchor IoU, plus each box's single best anchor
  forced to it.
* `MutualGuidanceMatcher`, the paper's: *localize to classify* (classification labels chosen by the IoU of the
  predicted boxes) and *classify to localize* (regression positives chosen by an IoU weighted with the predicted
  class probability).

`label_anchors` turns either into `AnchorLabels`, what `losses.mutual_guide_losses` consumes.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Instances

__all__ = [
    "AnchorLabels",
    "BestAnchorIoUMatcher",
    "MutualGuidanceMatcher",
    "batched_pairwise_iou",
    "label_anchors",
    "pad_ground_truth",
]

# Marks written into the quality matrices by mutual guidance. Kept qualities are IoUs (or IoU powers) in [0, 1],
# so any mark above them orders the anchors: positive > ignored > kept value.
_POSITIVE_MARK = 3.0
_IGNORED_MARK = 2.0


class AnchorLabels(NamedTuple):
    """
    Per-anchor training targets, all [N, A] tensors.

    cls_labels: long, class in [0, C) for classification positives, C for negatives, -1 for ignored anchors.
    reg_mask: bool, regression positives.
    reg_idx: long, index into G of the box a regression positive regresses to (meaningless elsewhere).
    cls_idx: long, index into G of the box whose class labels a positive or ignored anchor (meaningless elsewhere).
    ignored_class: long, at an ignored anchor the class of `cls_idx`'s box, C elsewhere. Read by the loss only under
        the "class" ignore rule (an ignored anchor leaves out that class's score only); under the seed's "anchor"
        rule an ignored anchor has no classification term at all.
    """

    cls_labels: Tensor
    reg_mask: Tensor
    reg_idx: Tensor
    cls_idx: Tensor
    ignored_class: Tensor


def pad_ground_truth(gt_instances: List[Instances]) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Stack per-image ground truth into padded tensors, valid boxes first in each image.

    Returns:
        gt_boxes [N, G, 4] float XYXY, gt_classes [N, G] long, valid [N, G] bool, with G the largest number of
        boxes in an image (possibly 0). Padding is zeros.
    """
    num_boxes = [len(x) for x in gt_instances]
    g = max(num_boxes, default=0)
    n = len(gt_instances)
    device = gt_instances[0].gt_boxes.tensor.device if n else torch.device("cpu")
    gt_boxes = torch.zeros(n, g, 4, device=device)
    gt_classes = torch.zeros(n, g, dtype=torch.long, device=device)
    valid = torch.zeros(n, g, dtype=torch.bool, device=device)
    for i, (inst, k) in enumerate(zip(gt_instances, num_boxes)):
        gt_boxes[i, :k] = inst.gt_boxes.tensor
        gt_classes[i, :k] = inst.gt_classes
        valid[i, :k] = True
    return gt_boxes, gt_classes, valid


def batched_pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """
    IoU of [N, G, 4] against [N, A, 4] (or [A, 4], shared) XYXY boxes: [N, G, A].

    The same operations, in the same order, as detectron2's `pairwise_iou`, so results are bit-identical to it
    image by image; it has no batched form.
    """
    if boxes2.dim() == 2:
        boxes2 = boxes2.unsqueeze(0)
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    b1, b2 = boxes1.unsqueeze(2), boxes2.unsqueeze(1)  # [N, G, 1, 4], [N, 1, A, 4]
    # in place where possible: these are the largest tensors of a training step's assignment
    width = torch.min(b1[..., 2], b2[..., 2]).sub_(torch.max(b1[..., 0], b2[..., 0])).clamp_(min=0)
    height = torch.min(b1[..., 3], b2[..., 3]).sub_(torch.max(b1[..., 1], b2[..., 1])).clamp_(min=0)
    inter = width.mul_(height)
    overlapping = inter > 0
    union = (area1.unsqueeze(2) + area2.unsqueeze(1)).sub_(inter)
    return inter.div_(union).masked_fill_(~overlapping, 0.0)


def _top_n_mask(scores: Tensor, n: Tensor) -> Tensor:
    """
    [..., A] bool: the n[...] highest scores of each row; among equal scores the lower anchor index goes first
    (torch.topk alone leaves ties unspecified).
    """
    k = int(n.max()) if n.numel() else 0
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = scores.topk(k, dim=-1).values.gather(-1, (n - 1).clamp(min=0).unsqueeze(-1))
    mask = scores >= kth
    # Rows where scores equal to the n-th spill over n: keep the ties of lowest index. Usually few rows.
    rows = ((mask.sum(-1) > n) & (n > 0)).nonzero(as_tuple=True)
    if rows[0].numel():
        sub, sub_kth = scores[rows], kth[rows]
        above, tie = sub > sub_kth, sub == sub_kth
        need = n[rows].unsqueeze(-1) - above.sum(-1, keepdim=True)
        mask[rows] = above | (tie & (tie.cumsum(-1) <= need))
    return mask & (n > 0).unsqueeze(-1)


def _best_anchor_per_box(quality: Tensor) -> Tensor:
    """[N, G] index of each box's best anchor; argmax returns the first (lowest index) of equal maxima."""
    return quality.argmax(dim=-1)


class BestAnchorIoUMatcher:
    """
    The IoU baseline: each anchor takes the box it overlaps most (detectron2 `Matcher`, thresholds low/high:
    IoU < low negative, [low, high) ignored, >= high positive), then each box's single best anchor is forced to
    it and made positive. If boxes share a best anchor, the higher box index keeps it (as the authors' loop,
    where later boxes overwrite). Unlike `allow_low_quality_matches`, which keeps every tied anchor but leaves it
    with its own best box, exactly one anchor per box is forced, to that box.
    """

    def __init__(self, thresholds: Tuple[float, float] = (0.4, 0.5)):
        self.matcher = Matcher(list(thresholds), [0, -1, 1], allow_low_quality_matches=False)

    def __call__(self, anchor_iou: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            anchor_iou: [N, G, A] IoU of each box with each anchor.
            valid: [N, G] real boxes (the rest is padding).
        Returns:
            matches [N, A] long box index and match_labels [N, A] int8 in {0 negative, -1 ignored, 1 positive}.
        """
        n, g, a = anchor_iou.shape
        # Padding gets IoU 0: it can only win a column whose real boxes all have IoU 0, which is then negative.
        quality = anchor_iou.masked_fill(~valid.unsqueeze(-1), 0.0)
        # Matcher reduces over dim 0; images become extra columns of one G x (N * A) matrix.
        matches, match_labels = self.matcher(quality.permute(1, 0, 2).reshape(g, n * a))
        matches, match_labels = matches.view(n, a), match_labels.view(n, a)
        if g == 0:
            return matches, match_labels
        best_anchor = _best_anchor_per_box(quality)
        box_index = torch.arange(g, device=quality.device).expand(n, g)
        forced_by = torch.full((n, a), -1, dtype=torch.long, device=quality.device)
        forced_by.scatter_reduce_(1, best_anchor, torch.where(valid, box_index, -1), reduce="amax")
        forced = forced_by >= 0
        matches = torch.where(forced, forced_by, matches)
        match_labels = torch.where(forced, torch.ones_like(match_labels), match_labels)
        return matches, match_labels


class MutualGuidanceMatcher:
    """
    Mutual guidance (Zhang et al., ACCV 2020, Sec. 3) on three G x A quality matrices per image:

        anchor_iou[g, a]  = IoU(box g, anchor a)
        pred_iou[g, a]    = IoU(box g, box predicted at anchor a)
        cls_quality[g, a] = anchor_iou[g, a] ** ((2 - p[g, a]) / 2),  p = predicted probability of g's class at a

    In each matrix every box's best anchor is set to 1, then each anchor column keeps only its maximum (all
    entries equal to it) and zeroes the rest. On the kept anchor IoU, each box g counts
    n_ign(g) = #(anchor_iou[g] >= low) and n_pos(g) = #(anchor_iou[g] >= high), so it keeps as many anchors as the
    IoU rule would give it, but chooses them by what the network predicts:

    * localize to classify: the n_ign(g) anchors of highest pred_iou[g] are ignored for g, the best n_pos(g) of
      them positive for g;
    * classify to localize: the n_pos(g) anchors of highest cls_quality[g] are regression positives for g.

    Each anchor then takes the box with the strongest mark (positive > ignored > kept value), the lower box index
    on ties. Within a row, equal values are ranked by lower anchor index.
    """

    def __init__(self, thresholds: Tuple[float, float] = (0.4, 0.5)):
        self.low, self.high = thresholds

    @staticmethod
    def _keep_column_maxima_(quality: Tensor, valid: Tensor) -> Tensor:
        """
        In place on a [N, G, A] matrix whose padding rows are 0: each real box's best anchor set to 1, entries
        below their column's maximum set to 0. Padding stays 0, so it is never counted nor marked.
        """
        best = _best_anchor_per_box(quality).unsqueeze(-1)
        quality.scatter_(2, best, valid.to(quality.dtype).unsqueeze(-1))
        column_max = quality.max(dim=1, keepdim=True).values
        return quality.masked_fill_(quality != column_max, 0.0)

    def __call__(
        self, anchor_iou: Tensor, pred_iou: Tensor, cls_quality: Tensor, valid: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            anchor_iou, pred_iou, cls_quality: [N, G, A] qualities in [0, 1].
            valid: [N, G] real boxes.
        Returns:
            cls_matches [N, A] long, cls_match_labels [N, A] int8 in {0, -1, 1} (negative, ignored, positive),
            reg_matches [N, A] long, reg_match_labels [N, A] int8 in {0, 1}.
        """
        n, g, a = anchor_iou.shape
        if g == 0:
            zeros = anchor_iou.new_zeros((n, a), dtype=torch.long)
            labels = anchor_iou.new_zeros((n, a), dtype=torch.int8)
            return zeros, labels, zeros.clone(), labels.clone()
        padding = ~valid.unsqueeze(-1)
        anchor_iou, pred_iou, cls_quality = (
            self._keep_column_maxima_(m.masked_fill(padding, 0.0), valid) for m in (anchor_iou, pred_iou, cls_quality)
        )

        num_ignored = (anchor_iou >= self.low).sum(-1)  # [N, G]
        num_positive = (anchor_iou >= self.high).sum(-1)

        # localize to classify
        ignored = _top_n_mask(pred_iou, num_ignored)
        positive = _top_n_mask(pred_iou, num_positive)
        cls_marks = pred_iou.masked_fill_(ignored, _IGNORED_MARK).masked_fill_(positive, _POSITIVE_MARK)
        # classify to localize
        reg_marks = cls_quality.masked_fill_(_top_n_mask(cls_quality, num_positive), _POSITIVE_MARK)

        # torch.max over boxes returns the first (lowest box index) of equal maxima.
        cls_best, cls_matches = cls_marks.max(dim=1)
        reg_best, reg_matches = reg_marks.max(dim=1)
        cls_labels = torch.zeros_like(cls_matches, dtype=torch.int8)
        cls_labels[cls_best == _IGNORED_MARK] = -1
        cls_labels[cls_best == _POSITIVE_MARK] = 1
        reg_labels = (reg_best == _POSITIVE_MARK).to(torch.int8)
        return cls_matches, cls_labels, reg_matches, reg_labels


def label_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    valid: Tensor,
    pred_boxes: Optional[Tensor] = None,
    pred_logits: Optional[Tensor] = None,
    mutual_guidance: bool = True,
    thresholds: Tuple[float, float] = (0.4, 0.5),
    num_classes: Optional[int] = None,
) -> AnchorLabels:
    """
    Label anchors for both tasks, batched over images and boxes.

    Args:
        anchors: [A, 4] XYXY.
        gt_boxes, gt_classes, valid: [N, G, 4], [N, G], [N, G] from `pad_ground_truth`.
        pred_boxes: [N, A, 4] decoded predicted boxes (mutual guidance only).
        pred_logits: [N, A, C] class logits (mutual guidance only); detached here.
        mutual_guidance: mutual guidance if True, else the IoU baseline.
        thresholds: (low, high) IoU thresholds.
        num_classes: C, the background value of `cls_labels`; defaults to pred_logits.shape[-1].
    """
    if num_classes is None:
        if pred_logits is None:
            raise ValueError("label_anchors needs num_classes when pred_logits is not given")
        num_classes = pred_logits.shape[-1]
    anchor_iou = batched_pairwise_iou(gt_boxes.float(), anchors.float())
    if mutual_guidance:
        if pred_boxes is None or pred_logits is None:
            raise ValueError("mutual guidance needs pred_boxes and pred_logits")
        pred_iou = batched_pairwise_iou(gt_boxes.float(), pred_boxes.detach().float())
        # probability of each box's class at each anchor, [N, G, A]: gather the G needed columns of the
        # [N, A, C] logits before anything else touches them (transposing all C columns costs a copy of them all)
        n, a = pred_logits.shape[:2]
        index = gt_classes.unsqueeze(1).expand(n, a, gt_classes.shape[1])
        prob = pred_logits.detach().gather(2, index).float().transpose(1, 2).sigmoid()
        cls_quality = anchor_iou ** ((2.0 - prob) / 2.0)
        matcher = MutualGuidanceMatcher(thresholds)
        cls_matches, cls_match_labels, reg_idx, reg_match_labels = matcher(anchor_iou, pred_iou, cls_quality, valid)
    else:
        cls_matches, cls_match_labels = BestAnchorIoUMatcher(thresholds)(anchor_iou, valid)
        reg_idx, reg_match_labels = cls_matches, cls_match_labels

    if gt_classes.shape[1] == 0:
        matched_classes = torch.full_like(cls_matches, num_classes)
    else:
        matched_classes = gt_classes.gather(1, cls_matches)
    background = torch.full_like(matched_classes, num_classes)
    cls_labels = torch.where(cls_match_labels == 1, matched_classes, background)
    cls_labels = torch.where(cls_match_labels == -1, torch.full_like(cls_labels, -1), cls_labels)
    ignored_class = torch.where(cls_match_labels == -1, matched_classes, background)
    return AnchorLabels(
        cls_labels=cls_labels,
        reg_mask=reg_match_labels == 1,
        reg_idx=reg_idx,
        cls_idx=cls_matches,
        ignored_class=ignored_class,
    )
