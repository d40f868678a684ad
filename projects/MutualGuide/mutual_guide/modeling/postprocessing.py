"""
Test-time selection of detections from dense predictions, batched over images; and, when an evaluation asks for
them (`removed_candidates_recorded`), the candidates NMS removed, each with the kept detection that removed it.
"""
import contextlib
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.layers import batched_nms
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances, pairwise_iou

__all__ = [
    "NMS_RULES",
    "REMOVED_CANDIDATES",
    "nms_with_removed",
    "removed_candidates_recorded",
    "rescale_detections",
    "select_detections",
    "top_candidates",
]

# The key of a model's output dict holding an image's removed candidates (Instances with pred_boxes, scores,
# pred_classes and kept_index, the index in "instances" of the detection that removed each), when recorded.
REMOVED_CANDIDATES = "removed_candidates"
# MODEL.MUTUAL_GUIDE.NMS_RULE: "per_class", the paper's (every (anchor, class) pair above the threshold is a
# candidate, NMS per class); "class_agnostic", the authors' code at 108b4a8 (utils/box/detection.py and test.py):
# an anchor is a candidate when its best class score is above the threshold, one NMS over all classes on that
# score, then each kept anchor gives a detection for every class scoring above the threshold.
NMS_RULES = ("per_class", "class_agnostic")
_REMOVED_CHUNK = 4096  # candidates per IoU block: bounds the [removed, kept] IoU matrix's memory


@contextlib.contextmanager
def removed_candidates_recorded(model: nn.Module):
    """
    Within the block, every detector inside `model` (itself, or a DDP wrapper's) that can (a
    `record_removed_candidates` attribute) adds REMOVED_CANDIDATES to its test-time outputs. Off outside:
    inference and the exported graph are unchanged.
    """
    detectors = [m for m in model.modules() if hasattr(m, "record_removed_candidates")]
    before = [m.record_removed_candidates for m in detectors]
    for m in detectors:
        m.record_removed_candidates = True
    try:
        yield
    finally:
        for m, value in zip(detectors, before):
            m.record_removed_candidates = value


def nms_with_removed(
    boxes: Tensor, scores: Tensor, classes: Tensor, nms_thresh: float, max_detections: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Per-class NMS (detectron2's batched_nms) and what it removed.

    Returns:
        kept: [K] candidate indices of the detections, by decreasing score (the best `max_detections`);
        removed: [R] candidate indices NMS removed whose remover is among `kept`;
        removed_by: [R] position in `kept` of the detection that removed each.
    The remover is found by replaying greedy NMS: the first kept box, in score order, of the same class with
    IoU > `nms_thresh` (the box that suppressed it when NMS reached it; with equal scores, possibly another of
    that score). A candidate whose remover is a box NMS kept but `max_detections` cut (it cannot be before every
    kept detection with IoU > thresh) is left out: the detection that would own it is not in the output.
    """
    keep = batched_nms(boxes, scores, classes, nms_thresh)
    kept = keep[:max_detections]
    is_kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    is_kept[keep] = True
    candidates = torch.nonzero(~is_kept).squeeze(1)
    removed, removed_by = [], []
    # class by class: a candidate is only removed by a box of its class (a fraction of one [removed, kept] matrix)
    kept_classes = classes[kept]
    for c in torch.unique(classes[candidates]).tolist():
        positions = torch.nonzero(kept_classes == c).squeeze(1)
        if positions.numel() == 0:
            continue
        kept_boxes = Boxes(boxes[kept[positions]])
        of_class = candidates[classes[candidates] == c]
        for chunk in of_class.split(_REMOVED_CHUNK):
            suppresses = pairwise_iou(Boxes(boxes[chunk]), kept_boxes) > nms_thresh
            found = suppresses.any(dim=1)
            removed.append(chunk[found])
            # the first True: the first kept box of the class in score order
            removed_by.append(positions[suppresses[found].int().argmax(dim=1)])
    empty = candidates.new_zeros(0)
    if not removed:
        return kept, empty, empty
    removed, removed_by = torch.cat(removed), torch.cat(removed_by)
    order = torch.argsort(removed)  # in candidate order, whatever the class loop's
    return kept, removed[order], removed_by[order]


def top_candidates(logits: Tensor, num_anchors_per_level: List[int], k: int) -> Tuple[Tensor, Tensor]:
    """
    The test-time candidates, shared by the model (`select_detections`) and the export (`DetectorWithNMS`):
    [N, K] values and flat (anchor * C + class) indices of the `k` best (anchor, class) pairs of each level of
    [N, A, C] `logits` (or scores: the sigmoid keeps their order). Scriptable, for the exported selection.
    """
    n, c = logits.shape[0], logits.shape[2]
    values: List[Tensor] = []
    indices: List[Tensor] = []
    start = 0
    for count in num_anchors_per_level:
        level = logits[:, start : start + count].reshape(n, count * c)
        # top-k of the logits: the sigmoid keeps their order and is then taken of the K candidates only
        top_values, top_index = level.topk(min(k, count * c), dim=1)
        values.append(top_values)
        indices.append(top_index + start * c)
        start += count
    return torch.cat(values, dim=1), torch.cat(indices, dim=1)


def select_detections(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    box2box_transform: Box2BoxTransform,
    image_size: int,
    num_anchors_per_level: Sequence[int],
    *,
    score_thresh: float,
    nms_thresh: float,
    topk_candidates: int,
    max_detections: int,
    return_removed: bool = False,
    nms_rule: str = "per_class",
):
    """
    The paper's test-time selection: sigmoid scores above `score_thresh` among the per-level top
    `topk_candidates` (all when <= 0), decoded and clipped to the S x S image, per-class NMS at `nms_thresh`,
    the best `max_detections` per image.

    Batched: candidates, scores and boxes of all images come from one top-k per level and one decoding; the
    host reads the batch twice (which candidates pass, how many per image), then runs one NMS call per image
    (torchvision's batched NMS over classes). Boxes left empty by clipping are dropped before NMS: they overlap
    nothing, so no other box changes, they only no longer take a place among the best `max_detections`.

    Args:
        logits, deltas: [N, A, C], [N, A, 4] network outputs (any float dtype; scores and boxes in float32).
        anchors: [A, 4] XYXY pixels of the S x S input.
        return_removed: also return what NMS removed (`nms_with_removed`).
        nms_rule: "per_class" (above) or "class_agnostic" (`NMS_RULES`, `_select_class_agnostic`).
    Returns:
        N Instances (pred_boxes, scores, pred_classes) in the S x S frame; with `return_removed`, also N Instances
        of the removed candidates (pred_boxes, scores, pred_classes, kept_index: index of their remover).
    """
    if nms_rule not in NMS_RULES:
        raise ValueError(f"MODEL.MUTUAL_GUIDE.NMS_RULE must be one of {NMS_RULES}, got {nms_rule!r}")
    n, _, num_classes = logits.shape
    # every anchor's box, decoded in float32 and clipped (Boxes.clip would also assert finiteness: a host read)
    boxes = box2box_transform.apply_deltas(deltas.float().reshape(-1, 4), anchors.float().repeat(n, 1))
    boxes = boxes.clamp(min=0.0, max=float(image_size)).view(n, -1, 4)
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # [N, A]
    if nms_rule == "class_agnostic":
        return _select_class_agnostic(
            logits, boxes, nonempty, image_size, num_anchors_per_level, score_thresh, nms_thresh, topk_candidates,
            max_detections, return_removed,
        )
    if topk_candidates > 0:
        cand_logits, cand_index = top_candidates(logits, list(num_anchors_per_level), topk_candidates)
        cand_anchor = torch.div(cand_index, num_classes, rounding_mode="floor")
        cand_scores = torch.sigmoid(cand_logits.float())
        keep = (cand_scores > score_thresh) & nonempty.gather(1, cand_anchor)
        image_idx, cand_idx = keep.nonzero(as_tuple=True)  # host read 1
        anchor_idx = cand_anchor[image_idx, cand_idx]
        classes = cand_index[image_idx, cand_idx] - anchor_idx * num_classes
        scores = cand_scores[image_idx, cand_idx]
    else:
        dense_scores = torch.sigmoid(logits.float())
        keep = (dense_scores > score_thresh) & nonempty.unsqueeze(-1)
        image_idx, anchor_idx, classes = keep.nonzero(as_tuple=True)  # host read 1
        scores = dense_scores[image_idx, anchor_idx, classes]
    boxes = boxes[image_idx, anchor_idx]
    counts = torch.bincount(image_idx, minlength=n).tolist()  # host read 2

    results, removed = [], []
    for boxes_i, scores_i, classes_i in zip(boxes.split(counts), scores.split(counts), classes.split(counts)):
        if return_removed:
            kept, gone, gone_by = nms_with_removed(boxes_i, scores_i, classes_i, nms_thresh, max_detections)
            removed.append(Instances((image_size, image_size), pred_boxes=Boxes(boxes_i[gone]), scores=scores_i[gone],
                                     pred_classes=classes_i[gone], kept_index=gone_by))
        else:
            kept = batched_nms(boxes_i, scores_i, classes_i, nms_thresh)[:max_detections]
        result = Instances((image_size, image_size))
        result.pred_boxes = Boxes(boxes_i[kept])
        result.scores = scores_i[kept]
        result.pred_classes = classes_i[kept]
        results.append(result)
    return (results, removed) if return_removed else results


def _select_class_agnostic(
    logits: Tensor,
    boxes: Tensor,
    nonempty: Tensor,
    image_size: int,
    num_anchors_per_level: Sequence[int],
    score_thresh: float,
    nms_thresh: float,
    topk_candidates: int,
    max_detections: int,
    return_removed: bool,
):
    """
    The test-time selection of the authors' code at 108b4a8: an anchor is a candidate when its best class score
    is above `score_thresh` (and, with `topk_candidates` > 0, it is among the best `topk_candidates` anchors of
    its level by that score); one NMS per image over all classes, on the best score; every kept anchor then gives
    a detection for each class scoring above `score_thresh` (one box may be several detections). The best
    `max_detections` per image by score are returned, in decreasing score. The removed candidates (with
    `return_removed`) are the anchors the NMS removed, with their best class and score, each attributed to the
    detection of its remover for that class (left out when the remover has no detection of that class).
    """
    n, _, num_classes = logits.shape
    scores = torch.sigmoid(logits.float())  # [N, A, C]
    best, best_class = scores.max(dim=2)  # [N, A]
    keep = (best > score_thresh) & nonempty
    if topk_candidates > 0:
        in_top = torch.zeros_like(keep)
        start = 0
        for count in num_anchors_per_level:
            k = min(topk_candidates, count)
            in_top[:, start : start + count].scatter_(1, best[:, start : start + count].topk(k, dim=1)[1], True)
            start += count
        keep &= in_top
    results, removed = [], []
    for i in range(n):
        anchor_idx = keep[i].nonzero().squeeze(1)
        boxes_i, best_i = boxes[i, anchor_idx], best[i, anchor_idx]
        same = torch.zeros_like(anchor_idx)
        if return_removed:
            kept, gone, gone_by = nms_with_removed(boxes_i, best_i, same, nms_thresh, len(anchor_idx))
        else:
            kept = batched_nms(boxes_i, best_i, same, nms_thresh)
        # every class above the threshold of each kept anchor, in the order of the kept anchors
        pair_anchor, pair_class = (scores[i, anchor_idx[kept]] > score_thresh).nonzero(as_tuple=True)
        pair_score = scores[i, anchor_idx[kept][pair_anchor], pair_class]
        order = pair_score.argsort(descending=True, stable=True)[:max_detections]
        result = Instances((image_size, image_size))
        result.pred_boxes = Boxes(boxes_i[kept][pair_anchor[order]])
        result.scores = pair_score[order]
        result.pred_classes = pair_class[order]
        results.append(result)
        if return_removed:
            gone_class = best_class[i, anchor_idx[gone]]
            # position in `result` of the detection (remover anchor, removed candidate's class), -1 when none
            position = torch.full((len(kept), num_classes), -1, dtype=torch.long, device=logits.device)
            position[pair_anchor[order], pair_class[order]] = torch.arange(len(order), device=logits.device)
            kept_index = position[gone_by, gone_class]
            owned = kept_index >= 0
            removed.append(Instances(
                (image_size, image_size), pred_boxes=Boxes(boxes_i[gone][owned]), scores=best_i[gone][owned],
                pred_classes=gone_class[owned], kept_index=kept_index[owned],
            ))
    return (results, removed) if return_removed else results


def rescale_detections(result: Instances, height: int, width: int) -> Instances:
    """
    Detections of the S x S input in the original image's pixels, x and y scaled apart (the resize did not keep
    the aspect ratio). detectron2's detector_postprocess does the same but also asserts that the boxes are
    finite and drops empty ones, two host reads per image; here boxes are finite and non-empty already.
    """
    s_h, s_w = result.image_size
    out = Instances((height, width), **result.get_fields())  # every other field (kept_index) as it is
    boxes = result.pred_boxes.clone()
    boxes.scale(width / s_w, height / s_h)
    boxes.tensor[:, 0::2] = boxes.tensor[:, 0::2].clamp(0, width)
    boxes.tensor[:, 1::2] = boxes.tensor[:, 1::2].clamp(0, height)
    out.pred_boxes = boxes
    return out
