"""
Anchor assignment: which anchors each task learns from, and which box each of them learns.

Two anchor matchers with one interface, built once and handed to the detector as detectron2's `RetinaNet` is
handed its `anchor_matcher`:

* `BestAnchorIoUMatcher`, the baseline: detectron2's `Matcher` on anchor IoU, plus each box's single best anchor
  forced to it.
* `MutualGuidanceMatcher`, the paper's: *localize to classify* (classification labels chosen by the IoU of the
  predicted boxes) and *classify to localize* (regression positives chosen by an IoU weighted with the predicted
  class probability).

Calling either with the anchors, the padded ground truth (`pad_ground_truth`) and, for mutual guidance, the
predicted boxes and class logits returns `AnchorLabels`, what the losses consume. Both are batched over images
and boxes; `match` is the same rule on the quality matrices alone, as detectron2's `Matcher`.
"""
import itertools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Instances

__all__ = [
    "AnchorLabels",
    "AnchorMatcher",
    "BestAnchorIoUMatcher",
    "MutualGuidanceMatcher",
    "batched_pairwise_iou",
    "build_anchor_matcher",
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
        the "class" ignore rule (an ignored anchor leaves out that class's score only); under the paper's "anchor"
        rule an ignored anchor has no classification term at all.
    (`dynamic_assignment.SoftAnchorLabels` adds soft weights to these fields.)
    """

    cls_labels: Tensor
    reg_mask: Tensor
    reg_idx: Tensor
    cls_idx: Tensor
    ignored_class: Tensor


def pad_ground_truth(gt_instances: List[Instances]) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Stack per-image ground truth into padded tensors, each image's boxes first.

    Returns:
        gt_boxes [N, G, 4] float XYXY, gt_classes [N, G] long, valid [N, G] bool, with G the largest number of
        boxes in an image (possibly 0). Padding is zeros.
    """
    n = len(gt_instances)
    device = gt_instances[0].gt_boxes.tensor.device if n else torch.device("cpu")
    if n == 0:
        return torch.zeros(0, 0, 4), torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool)
    gt_boxes = pad_sequence([x.gt_boxes.tensor.float() for x in gt_instances], batch_first=True)
    gt_classes = pad_sequence([x.gt_classes.long() for x in gt_instances], batch_first=True)
    valid = pad_sequence(
        [torch.ones(len(x), dtype=torch.bool, device=device) for x in gt_instances], batch_first=True
    )
    return gt_boxes, gt_classes, valid


def batched_pairwise_iou(boxes1: Tensor, boxes2: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """
    IoU of [N, G, 4] against [N, A, 4] (or [A, 4], shared) XYXY boxes: [N, G, A], written into `out` if given
    (a contiguous float32 tensor of that shape, e.g. a block of rows of a larger matrix).

    The same operations, in the same order, as detectron2's `pairwise_iou`, so results are bit-identical to it
    image by image; it has no batched form. No overlap gives +0.0 (never -0.0 or NaN).
    """
    if boxes2.dim() == 2:
        boxes2 = boxes2.unsqueeze(0)
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    b1, b2 = boxes1.unsqueeze(2), boxes2.unsqueeze(1)  # [N, G, 1, 4], [N, 1, A, 4]
    # in place where possible: these are the largest tensors of a training step's assignment
    if out is None:
        width = torch.min(b1[..., 2], b2[..., 2])
    else:
        width = torch.minimum(b1[..., 2], b2[..., 2], out=out)
    width.sub_(torch.max(b1[..., 0], b2[..., 0])).clamp_(min=0)
    height = torch.min(b1[..., 3], b2[..., 3]).sub_(torch.max(b1[..., 1], b2[..., 1])).clamp_(min=0)
    inter = width.mul_(height)
    overlapping = inter > 0
    union = (area1.unsqueeze(2) + area2.unsqueeze(1)).sub_(inter)
    return inter.div_(union).masked_fill_(~overlapping, 0.0)


def _mark_top_n_(scores: Tensor, marks: Sequence[Tuple[Tensor, float]], k: int) -> Tensor:
    """
    In place on [T, A] `scores`: for each (n, mark) of `marks`, in order, the n[t] highest scores of row t
    (n: [T] integers, at most k) set to `mark`, among equal scores the lower anchor index first (torch.topk alone
    leaves ties unspecified). Later marks overwrite earlier ones, so give the larger sets first.

    `scores` must be float32 and >= +0.0 (IoUs and IoU powers). Their bit patterns, read as integers, are then in
    the same order as the values; shifted left and completed with the reversed anchor index they become keys
    that are all distinct and order the anchors exactly as wanted. One top-k of the keys ranks the k best
    anchors of every row; the marks are written at those k columns only. No tie handling, nothing read back to
    the host.
    """
    if k == 0 or scores.shape[0] == 0:
        return scores
    top = top_k_lower_index_first(scores, k)
    rank = torch.arange(k, device=scores.device)
    values = scores.gather(1, top)
    for n, mark in marks:
        values = values.masked_fill(rank < n.unsqueeze(-1), mark)
    return scores.scatter_(1, top, values)


def top_k_lower_index_first(scores: Tensor, k: int) -> Tensor:
    """
    [T, k] column indices of the k highest of each row of the float32 [T, A] `scores` (all >= +0.0), best first,
    equal scores in increasing index order: one top-k of integer keys (see `_mark_top_n_`), no tie handling.
    """
    num_anchors = scores.shape[-1]
    shift = max(1, (num_anchors - 1).bit_length())
    reversed_index = torch.arange(num_anchors - 1, -1, -1, device=scores.device)
    keys = scores.view(torch.int32).to(torch.int64).bitwise_left_shift_(shift).bitwise_or_(reversed_index)
    return keys.topk(k, dim=-1).indices


def _best_anchor_per_box(quality: Tensor) -> Tensor:
    """[N, G] index of each box's best anchor; argmax returns the first (lowest index) of equal maxima."""
    return quality.argmax(dim=-1)


class AnchorMatcher:
    """
    What both matchers share: the IoU thresholds, the background label, and the call that turns a match into
    `AnchorLabels`. `uses_predictions` says whether the call needs `pred_boxes` and `pred_logits`.
    """

    uses_predictions = False

    def __init__(self, thresholds: Sequence[float], num_classes: int):
        """
        Args:
            thresholds: (low, high) anchor IoU thresholds: below low negative, [low, high) ignored, from high
                positive.
            num_classes: C, object classes without background; C is the background value of `cls_labels`.
        """
        if len(thresholds) != 2 or not 0.0 <= thresholds[0] <= thresholds[1] <= 1.0:
            raise ValueError(f"IoU thresholds must be [low, high] with 0 <= low <= high <= 1, got {list(thresholds)}")
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.low, self.high = float(thresholds[0]), float(thresholds[1])
        self.num_classes = num_classes

    def __repr__(self):
        return f"{type(self).__name__}(thresholds=({self.low}, {self.high}), num_classes={self.num_classes})"

    def __call__(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_classes: Tensor,
        valid: Tensor,
        pred_boxes: Optional[Tensor] = None,
        pred_logits: Optional[Tensor] = None,
        counts: Optional[Sequence[int]] = None,
    ) -> AnchorLabels:
        """
        Label anchors for both tasks, batched over images and boxes.

        Args:
            anchors: [A, 4] XYXY, shared by the images.
            gt_boxes, gt_classes, valid: [N, G, 4], [N, G], [N, G] from `pad_ground_truth`, in the anchors' frame.
            pred_boxes: [N, A, 4] decoded predicted boxes in the anchors' frame (mutual guidance only).
            pred_logits: [N, A, C] class logits (mutual guidance only).
            counts: the number of boxes of each image, known on the host (`inputs.GroundTruth.counts`); `valid`
                must then mark each image's first counts[i] boxes. Read from `valid` when not given (one host
                read of mutual guidance; the baseline does not need it).
        Both predictions are read without gradient. Computed in float32 whatever dtype the predictions come in
        (autocast is turned off here), so that the labels do not depend on the precision the network ran in.
        Reads one value back to the host (the largest top-k of mutual guidance; detectron2's Matcher reads a few
        more for the baseline), whatever the batch.
        """
        with torch.no_grad(), torch.autocast(anchors.device.type, enabled=False):
            cls_matches, cls_match_labels, reg_idx, reg_match_labels = self._match_boxes(
                anchors.float(), gt_boxes.float(), gt_classes, valid, pred_boxes, pred_logits, counts
            )
            return self._anchor_labels(gt_classes, cls_matches, cls_match_labels, reg_idx, reg_match_labels)

    def _match_boxes(self, anchors, gt_boxes, gt_classes, valid, pred_boxes, pred_logits, counts):
        raise NotImplementedError

    def _anchor_labels(self, gt_classes, cls_matches, cls_match_labels, reg_idx, reg_match_labels) -> AnchorLabels:
        num_classes = self.num_classes
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


class BestAnchorIoUMatcher(AnchorMatcher):
    """
    The IoU baseline: each anchor takes the box it overlaps most (detectron2 `Matcher`, thresholds low/high:
    IoU < low negative, [low, high) ignored, >= high positive), then each box's single best anchor is forced to
    it and made positive. If boxes share a best anchor, the higher box index keeps it (as the authors' loop,
    where later boxes overwrite). Unlike `allow_low_quality_matches`, which keeps every tied anchor but leaves it
    with its own best box, exactly one anchor per box is forced, to that box.

    Both tasks learn from the same anchors: the regression positives are the classification positives.
    Predictions given to the call are not read.
    """

    def __init__(self, thresholds: Sequence[float], num_classes: int):
        super().__init__(thresholds, num_classes)
        self.matcher = Matcher([self.low, self.high], [0, -1, 1], allow_low_quality_matches=False)

    def _match_boxes(self, anchors, gt_boxes, gt_classes, valid, pred_boxes, pred_logits, counts):
        matches, match_labels = self.match(batched_pairwise_iou(gt_boxes, anchors), valid)
        return matches, match_labels, matches, match_labels

    def match(self, anchor_iou: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
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


class MutualGuidanceMatcher(AnchorMatcher):
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

    The matrices hold the batch's real boxes only, image after image ([T, A], T = sum of the counts): the padding
    of `pad_ground_truth` is never computed on. With many boxes in some images and few in others (COCO, VOC,
    crowded scenes), padding to the largest count would multiply the work by the ratio of the two.
    """

    uses_predictions = True

    def _match_boxes(self, anchors, gt_boxes, gt_classes, valid, pred_boxes, pred_logits, counts):
        if pred_boxes is None or pred_logits is None:
            raise ValueError("mutual guidance needs pred_boxes and pred_logits")
        if pred_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits have {pred_logits.shape[-1]} classes, the matcher was built for {self.num_classes}"
            )
        counts = _box_counts(valid, counts)
        segments = _segments(counts)
        # [T, 4] and [T]: slices, nothing read back
        boxes = torch.cat([gt_boxes[i, :c] for i, c in enumerate(counts)] + [gt_boxes.new_zeros(0, 4)])
        classes = torch.cat([gt_classes[i, :c] for i, c in enumerate(counts)] + [gt_classes.new_zeros(0)])
        anchor_iou = batched_pairwise_iou(boxes.unsqueeze(0), anchors)[0]  # [T, A]
        pred_iou = torch.empty_like(anchor_iou)
        prob = torch.empty_like(anchor_iou)
        for i, (start, end) in enumerate(segments):
            if end > start:
                image_boxes = boxes[None, start:end]
                batched_pairwise_iou(image_boxes, pred_boxes[i].detach().float(), out=pred_iou[None, start:end])
                # logit of each box's class at each anchor: the needed columns of the [A, C] logits only, read
                # as rows of the transposed view straight into place
                logits = pred_logits[i].detach().t()
                if logits.dtype == prob.dtype:
                    torch.index_select(logits, 0, classes[start:end], out=prob[start:end])
                else:
                    prob[start:end] = logits.index_select(0, classes[start:end])
        # anchor_iou ** ((2 - p) / 2), in place: -p + 2 is 2 - p exactly, and halving is exact
        cls_quality = torch.pow(anchor_iou, prob.sigmoid_().neg_().add_(2.0).div_(2.0), out=prob)
        return self.match(anchor_iou, pred_iou, cls_quality, counts)

    @staticmethod
    def _keep_column_maxima_(quality: Tensor, segments: List[Tuple[int, int]]) -> Tensor:
        """
        In place on a [T, A] matrix of the rows of each image in turn (`segments`): each box's best anchor set
        to 1, then in each image the entries below their anchor column's maximum set to 0.
        """
        if quality.shape[0] == 0:
            return quality
        quality.scatter_(1, _best_anchor_per_box(quality).unsqueeze(-1), 1.0)
        for start, end in segments:
            if end > start:
                block = quality[start:end]
                block.masked_fill_(block != block.amax(dim=0, keepdim=True), 0.0)
        return quality

    def match(
        self, anchor_iou: Tensor, pred_iou: Tensor, cls_quality: Tensor, counts: Sequence[int]
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            anchor_iou, pred_iou, cls_quality: [T, A] qualities in [0, 1] (+0.0 for none), the first counts[0]
                rows image 0's boxes, the next counts[1] image 1's, and so on. Overwritten.
            counts: boxes per image.
        Returns:
            cls_matches [N, A] long (index of the box within its image), cls_match_labels [N, A] int8 in
            {0, -1, 1} (negative, ignored, positive), reg_matches [N, A] long, reg_match_labels [N, A] int8 in
            {0, 1}.
        """
        segments = _segments(counts)
        for quality in (anchor_iou, pred_iou, cls_quality):
            self._keep_column_maxima_(quality, segments)

        num_ignored = (anchor_iou >= self.low).sum(-1, dtype=torch.int32)  # [T]
        num_positive = (anchor_iou >= self.high).sum(-1, dtype=torch.int32)  # <= num_ignored
        k = int(num_ignored.max()) if len(num_ignored) else 0  # the one host read of the assignment

        # localize to classify: the ignored set first, its best n_pos then marked positive over it
        cls_marks = _mark_top_n_(pred_iou, [(num_ignored, _IGNORED_MARK), (num_positive, _POSITIVE_MARK)], k)
        # classify to localize
        reg_marks = _mark_top_n_(cls_quality, [(num_positive, _POSITIVE_MARK)], k)

        cls_best, cls_matches = _best_box_per_anchor(cls_marks, segments)
        reg_best, reg_matches = _best_box_per_anchor(reg_marks, segments)
        cls_labels = (cls_best == _POSITIVE_MARK).to(torch.int8) - (cls_best == _IGNORED_MARK).to(torch.int8)
        reg_labels = (reg_best == _POSITIVE_MARK).to(torch.int8)
        return cls_matches, cls_labels, reg_matches, reg_labels


def _box_counts(valid: Tensor, counts: Optional[Sequence[int]]) -> List[int]:
    """Boxes per image: when given, checked to fit `valid`'s [N, G] shape (not its values: that would be a host
    read); when not, read from `valid` (one host read), which must mark each image's first boxes."""
    n, g = valid.shape
    if counts is None:
        rows = valid.tolist()
        counts = [sum(row) for row in rows]
        if any(not all(row[:c]) for row, c in zip(rows, counts)):
            raise ValueError("valid must mark each image's first boxes (pad_ground_truth's layout)")
        return counts
    counts = [int(c) for c in counts]
    if len(counts) != n or any(not 0 <= c <= g for c in counts):
        raise ValueError(f"counts {counts} do not fit ground truth of {n} images padded to {g} boxes")
    return counts


def _segments(counts: Sequence[int]) -> List[Tuple[int, int]]:
    """(start, end) rows of each image in the stacked [T, A] matrices."""
    ends = list(itertools.accumulate(counts))
    return list(zip([0] + ends[:-1], ends))


def _best_box_per_anchor(marks: Tensor, segments: List[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
    """
    For each image and anchor, the highest mark of the image's boxes and the box's index within the image ([N, A]
    each); torch.max returns the first (lowest box index) of equal maxima. An image without boxes gets 0 and 0.
    """
    best = marks.new_zeros((len(segments), marks.shape[-1]))
    index = torch.zeros(best.shape, dtype=torch.long, device=marks.device)
    for i, (start, end) in enumerate(segments):
        if end > start:
            torch.max(marks[start:end], dim=0, out=(best[i], index[i]))
    return best, index


def build_anchor_matcher(mutual_guidance: bool, thresholds: Sequence[float], num_classes: int) -> AnchorMatcher:
    """`MutualGuidanceMatcher` if `mutual_guidance`, else the IoU baseline `BestAnchorIoUMatcher`."""
    return (MutualGuidanceMatcher if mutual_guidance else BestAnchorIoUMatcher)(thresholds, num_classes)
