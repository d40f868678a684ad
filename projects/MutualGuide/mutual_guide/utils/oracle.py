"""
Slow, plain reference implementations: one image at a time, one box at a time, written to be read against the
paper rather than to be fast. The vectorised code in `mutual_guide.modeling.assignment` / `mutual_guide.modeling.losses` must agree
with them exactly (assignment) or to float precision (losses).

Conventions (the same as the vectorised code):
- ties between anchors of one box (best anchor, top-n) go to the lower anchor index;
- ties between boxes at one anchor go to the lower box index, except that in the IoU baseline a box forcing its
  best anchor overwrites earlier boxes (the authors' loop);
- an ignored anchor leaves out all its class scores (ignore "anchor", the paper's code at fd2c4cc) or only the score of
  the class it is ignored for (ignore "class", the authors' later code).

The last section is the authors' code at 108b4a8 (MODEL.MUTUAL_GUIDE.RECIPE "authors_2023"), checked against
`mutual_guide.modeling.dynamic_assignment` and `mutual_guide.modeling.recipe_2023`.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from detectron2.structures import Boxes, pairwise_iou

POSITIVE, IGNORED, NEGATIVE = 1, -1, 0


def _first_argmax(row: Tensor) -> int:
    # torch documents argmax as returning the first of equal maxima
    return int(torch.argmax(row))


def _top_n(row: Tensor, n: int) -> List[int]:
    """Indices of the n highest values, equal values in increasing index order."""
    order = torch.sort(row, descending=True, stable=True).indices
    return order[:n].tolist()


def _per_anchor_winner(rows: List[Tensor]):
    """For each anchor, the highest value over boxes and the first box reaching it."""
    best = torch.full_like(rows[0], -math.inf)
    idx = torch.zeros(len(rows[0]), dtype=torch.long)
    for g, row in enumerate(rows):
        better = row > best
        best = torch.where(better, row, best)
        idx[better] = g
    return best, idx


def oracle_iou_match(anchors: Tensor, boxes: Tensor, thresholds=(0.4, 0.5)):
    """IoU baseline for one image: (box index [A], label [A] in {1, -1, 0})."""
    num_anchors = len(anchors)
    if len(boxes) == 0:
        return torch.zeros(num_anchors, dtype=torch.long), torch.zeros(num_anchors, dtype=torch.long)
    iou = pairwise_iou(Boxes(boxes), Boxes(anchors))
    best_iou, best_box = _per_anchor_winner(list(iou))
    for g in range(len(boxes)):  # each box forces its best anchor; later boxes overwrite earlier ones
        a = _first_argmax(iou[g])
        best_box[a] = g
        best_iou[a] = 1.0
    labels = torch.full((num_anchors,), NEGATIVE, dtype=torch.long)
    labels[best_iou >= thresholds[0]] = IGNORED
    labels[best_iou >= thresholds[1]] = POSITIVE
    return best_box, labels


def _keep_column_maxima(matrix: Tensor) -> Tensor:
    matrix = matrix.clone()
    for g in range(len(matrix)):
        matrix[g, _first_argmax(matrix[g])] = 1.0
    column_max = matrix[0].clone()
    for g in range(1, len(matrix)):
        column_max = torch.maximum(column_max, matrix[g])
    for g in range(len(matrix)):
        matrix[g][matrix[g] != column_max] = 0.0
    return matrix


def oracle_mutual_match(
    anchors: Tensor, boxes: Tensor, classes: Tensor, pred_boxes: Tensor, pred_logits: Tensor, thresholds=(0.4, 0.5)
):
    """
    Mutual guidance for one image.
    Returns (cls box index [A], cls label [A] in {1, -1, 0}, reg box index [A], reg positive [A] bool).
    """
    num_anchors = len(anchors)
    if len(boxes) == 0:
        zeros = torch.zeros(num_anchors, dtype=torch.long)
        return zeros, zeros.clone(), zeros.clone(), torch.zeros(num_anchors, dtype=torch.bool)
    anchor_iou = pairwise_iou(Boxes(boxes), Boxes(anchors))
    pred_iou = pairwise_iou(Boxes(boxes), Boxes(pred_boxes))
    prob = pred_logits.sigmoid()
    cls_quality = torch.stack(
        [anchor_iou[g] ** ((2.0 - prob[:, int(classes[g])]) / 2.0) for g in range(len(boxes))]
    )
    anchor_iou = _keep_column_maxima(anchor_iou)
    pred_iou = _keep_column_maxima(pred_iou)
    cls_quality = _keep_column_maxima(cls_quality)

    cls_marks, reg_marks = [], []
    for g in range(len(boxes)):
        num_ignored = int((anchor_iou[g] >= thresholds[0]).sum())
        num_positive = int((anchor_iou[g] >= thresholds[1]).sum())
        marks = pred_iou[g].clone()
        marks[_top_n(pred_iou[g], num_ignored)] = 2.0
        marks[_top_n(pred_iou[g], num_positive)] = 3.0
        cls_marks.append(marks)
        marks = cls_quality[g].clone()
        marks[_top_n(cls_quality[g], num_positive)] = 3.0
        reg_marks.append(marks)

    cls_best, cls_box = _per_anchor_winner(cls_marks)
    reg_best, reg_box = _per_anchor_winner(reg_marks)
    cls_label = torch.full((num_anchors,), NEGATIVE, dtype=torch.long)
    cls_label[cls_best == 2.0] = IGNORED
    cls_label[cls_best == 3.0] = POSITIVE
    return cls_box, cls_label, reg_box, reg_best == 3.0


def oracle_label_anchors(
    anchors: Tensor,
    boxes: Sequence[Tensor],
    classes: Sequence[Tensor],
    num_classes: int,
    pred_boxes: Optional[Tensor] = None,
    pred_logits: Optional[Tensor] = None,
    mutual_guidance: bool = True,
    thresholds=(0.4, 0.5),
) -> Dict[str, Tensor]:
    """
    Per-image lists of boxes [G_i, 4] and classes [G_i]. Returns [N, A] tensors: cls_labels (class, -1 ignored,
    num_classes negative), cls_idx (-1 at negatives), ignored_class (num_classes except at ignored anchors),
    reg_mask, reg_idx (-1 except at regression positives).
    """
    out = {k: [] for k in ("cls_labels", "cls_idx", "ignored_class", "reg_mask", "reg_idx")}
    for i, (boxes_i, classes_i) in enumerate(zip(boxes, classes)):
        if mutual_guidance:
            cls_box, cls_label, reg_box, reg_pos = oracle_mutual_match(
                anchors, boxes_i, classes_i, pred_boxes[i], pred_logits[i], thresholds
            )
        else:
            cls_box, cls_label = oracle_iou_match(anchors, boxes_i, thresholds)
            reg_box, reg_pos = cls_box, cls_label == POSITIVE
        labels = torch.full((len(anchors),), num_classes, dtype=torch.long)
        cls_idx = torch.full((len(anchors),), -1, dtype=torch.long)
        ignored_class = torch.full((len(anchors),), num_classes, dtype=torch.long)
        reg_idx = torch.full((len(anchors),), -1, dtype=torch.long)
        for g in range(len(boxes_i)):
            positive = (cls_label == POSITIVE) & (cls_box == g)
            ignored = (cls_label == IGNORED) & (cls_box == g)
            labels[positive] = int(classes_i[g])
            labels[ignored] = -1
            ignored_class[ignored] = int(classes_i[g])
            cls_idx[positive | ignored] = g
            reg_idx[reg_pos & (reg_box == g)] = g
        for k, v in zip(out, (labels, cls_idx, ignored_class, reg_pos.clone(), reg_idx)):
            out[k].append(v)
    return {k: torch.stack(v) for k, v in out.items()}


def ssd_encode(box: Sequence[float], anchor: Sequence[float], variances=(0.1, 0.2)) -> List[float]:
    """SSD box encoding of one XYXY box against one XYXY anchor."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    bx, by = box[0] + bw / 2, box[1] + bh / 2
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    return [
        (bx - ax) / (variances[0] * aw),
        (by - ay) / (variances[0] * ah),
        math.log(bw / aw) / variances[1],
        math.log(bh / ah) / variances[1],
    ]


def balanced_l1(x: float, alpha=0.5, gamma=1.5, beta=0.11) -> float:
    b = math.exp(gamma / alpha) - 1
    if x < beta:
        return alpha / b * (b * x + 1) * math.log(b * x / beta + 1) - alpha * x
    return gamma * x + gamma / b - alpha * beta


def focal(logit: Tensor, target: Tensor, alpha=0.25, gamma=1.0) -> Tensor:
    """Elementwise sigmoid focal loss: -alpha_t (1 - p_t)^gamma log(p_t)."""
    p = logit.sigmoid()
    log_p = torch.nn.functional.logsigmoid(logit)
    log_not_p = torch.nn.functional.logsigmoid(-logit)
    positive = alpha * (1 - p) ** gamma * -log_p
    negative = (1 - alpha) * p**gamma * -log_not_p
    return target * positive + (1 - target) * negative


def oracle_losses(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    boxes: Sequence[Tensor],
    labels: Dict[str, Tensor],
    focal_alpha=0.25,
    focal_gamma=1.0,
    bl1_alpha=0.5,
    bl1_gamma=1.5,
    bl1_beta=0.11,
    ignore="anchor",
) -> Dict[str, Tensor]:
    """Losses from `oracle_label_anchors` output, image by image, anchor by anchor for the positives."""
    num_classes = logits.shape[-1]
    cls_total, box_total = logits.new_zeros(()), deltas.new_zeros(())
    num_cls_pos, num_reg_pos = 0, 0
    for i in range(len(logits)):
        targets = torch.zeros_like(logits[i])
        keep = torch.ones_like(logits[i], dtype=torch.bool)
        for c in range(num_classes):
            positive = labels["cls_labels"][i] == c
            targets[positive, c] = 1.0
            num_cls_pos += int(positive.sum())
            ignored = labels["cls_labels"][i] == -1
            if ignore == "class":
                ignored = ignored & (labels["ignored_class"][i] == c)
            keep[ignored, c] = False
        cls_total = cls_total + (focal(logits[i], targets, focal_alpha, focal_gamma) * keep).sum()
        for a in labels["reg_mask"][i].nonzero().flatten().tolist():
            target = ssd_encode(boxes[i][labels["reg_idx"][i, a]].tolist(), anchors[a].tolist())
            for k in range(4):
                diff = float((deltas[i, a, k] - target[k]).abs())
                box_total = box_total + balanced_l1(diff, bl1_alpha, bl1_gamma, bl1_beta)
            num_reg_pos += 1
    return {
        "loss_cls": cls_total / max(1, num_cls_pos),
        "loss_box_reg": box_total / max(1, 4 * num_reg_pos),
    }


# ----------------------------------------------------------------------------- the authors' code at 108b4a8
def oracle_dynamic_mutual_match(
    anchors: Tensor, boxes: Tensor, classes: Tensor, pred_boxes: Tensor, pred_logits: Tensor, topk=15, sigma=2.0
):
    """
    The authors' 2023 mutual guidance for one image, object by object as their `mutual_match`.
    Returns (cls box [A], cls weight [A], cls positive [A], reg box [A], reg weight [A], reg positive [A]).
    """
    num_anchors = len(anchors)
    if len(boxes) == 0:
        zeros = torch.zeros(num_anchors, dtype=torch.long)
        none = torch.zeros(num_anchors, dtype=torch.bool)
        return zeros, torch.zeros(num_anchors), none, zeros.clone(), torch.zeros(num_anchors), none.clone()
    anchor_iou = pairwise_iou(Boxes(boxes), Boxes(anchors))
    prob = pred_logits.float().sigmoid()
    cls_quality = pairwise_iou(Boxes(boxes), Boxes(pred_boxes))
    reg_quality = torch.stack(
        [(anchor_iou[g] * torch.exp(prob[:, int(classes[g])] / sigma)).clamp(max=1.0) for g in range(len(boxes))]
    )
    out = []
    for quality in (cls_quality, reg_quality):
        quality = quality.clone()
        column_max = quality[0].clone()
        for g in range(1, len(quality)):
            column_max = torch.maximum(column_max, quality[g])
        for g in range(len(quality)):
            quality[g][quality[g] != column_max] = 0.0
        for g in range(len(quality)):
            row = quality[g]
            total = torch.topk(row, min(topk, num_anchors)).values.sum()
            n = min(max(1, int(total)), int((row > 0).sum()))
            for a in _top_n(row, n):
                row[a] += 3.0
        best, box = _per_anchor_winner(list(quality))
        out += [box, (best - 3.0).clamp(min=0.0), best >= 3.0]
    return tuple(out)


def oracle_label_anchors_2023(
    anchors: Tensor,
    boxes: Sequence[Tensor],
    classes: Sequence[Tensor],
    num_classes: int,
    pred_boxes: Tensor,
    pred_logits: Tensor,
    topk=15,
    sigma=2.0,
) -> Dict[str, Tensor]:
    """
    `oracle_dynamic_mutual_match` image by image. Returns [N, A] tensors: cls_labels (class, num_classes
    negative), cls_idx and reg_idx (-1 off the positives), reg_mask, cls_weight and reg_weight (0 off the positives).
    """
    out = {k: [] for k in ("cls_labels", "cls_idx", "reg_mask", "reg_idx", "cls_weight", "reg_weight")}
    for i, (boxes_i, classes_i) in enumerate(zip(boxes, classes)):
        cls_box, cls_w, cls_pos, reg_box, reg_w, reg_pos = oracle_dynamic_mutual_match(
            anchors, boxes_i, classes_i, pred_boxes[i], pred_logits[i], topk, sigma
        )
        labels = torch.full((len(anchors),), num_classes, dtype=torch.long)
        cls_idx = torch.full((len(anchors),), -1, dtype=torch.long)
        reg_idx = torch.full((len(anchors),), -1, dtype=torch.long)
        for a in cls_pos.nonzero().flatten().tolist():
            labels[a] = int(classes_i[cls_box[a]])
            cls_idx[a] = cls_box[a]
        for a in reg_pos.nonzero().flatten().tolist():
            reg_idx[a] = reg_box[a]
        for k, v in zip(out, (labels, cls_idx, reg_pos, reg_idx, cls_w * cls_pos, reg_w * reg_pos)):
            out[k].append(v)
    return {k: torch.stack(v) for k, v in out.items()}


def varifocal_poly(logit: Tensor, target: Tensor, alpha=0.75, gamma=2.0, epsilon=1.0) -> Tensor:
    """Elementwise: t BCE(p, t) + eps (1 - p)^(gamma+1) where t > 0, alpha p^gamma BCE(p, 0) + eps p^(gamma+1) else."""
    p = logit.sigmoid()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target, reduction="none")
    positive = target > 0
    weight = torch.where(positive, target, alpha * p**gamma)
    p_t = torch.where(positive, p, 1 - p)
    return bce * weight + epsilon * (1 - p_t) ** (gamma + 1)


def siou(box1: Sequence[float], box2: Sequence[float], eps=1e-7) -> float:
    """SIoU of two XYXY boxes in Python floats (Gevorgyan 2022, the form of the authors' SIOULoss)."""
    inter = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0])) * max(
        0.0, min(box1[3], box2[3]) - max(box1[1], box2[1])
    )
    w1, h1, w2, h2 = box1[2] - box1[0], box1[3] - box1[1], box2[2] - box2[0], box2[3] - box2[1]
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw = max(box1[2], box2[2]) - min(box1[0], box2[0])
    ch = max(box1[3], box2[3]) - min(box1[1], box2[1])
    dx = (box2[0] + box2[2] - box1[0] - box1[2]) / 2
    dy = (box2[1] + box2[3] - box1[1] - box1[3]) / 2
    # the angle of the centre offset to the nearer axis
    alpha = min(math.atan2(abs(dy), abs(dx)), math.atan2(abs(dx), abs(dy)))
    gamma = 2 - math.sin(2 * alpha)
    distance = 2 - math.exp(-gamma * (dx / cw) ** 2) - math.exp(-gamma * (dy / ch) ** 2)
    shape = (1 - math.exp(-abs(w1 - w2) / max(w1, w2))) ** 4 + (1 - math.exp(-abs(h1 - h2) / max(h1, h2))) ** 4
    return iou - (distance + shape) / 2


def oracle_authors_2023_losses(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    boxes: Sequence[Tensor],
    labels: Dict[str, Tensor],
    image_size: float,
    cls_weight=2.0,
    box_reg_weight=1.0,
    box_iou_weight=2.0,
) -> Dict[str, Tensor]:
    """
    The authors' 2023 mutual guidance losses from `oracle_label_anchors_2023` output: the classification loss
    over every score divided by the positives with a nonzero target; balanced L1 and 1 - SIoU (on the box decoded
    from the deltas, SSD variances 0.1 / 0.2, in the frame of the image side) at each regression positive,
    weighted by its weight, divided by the sum of the weights (times 4 for the deltas).
    """
    num_classes = logits.shape[-1]
    cls_total = logits.new_zeros(())
    num_pos, weight_sum, bl1_total, siou_total = 0, 0.0, 0.0, 0.0
    for i in range(len(logits)):
        targets = torch.zeros_like(logits[i])
        for a in (labels["cls_labels"][i] < num_classes).nonzero().flatten().tolist():
            if float(labels["cls_weight"][i, a]) > 0:
                targets[a, int(labels["cls_labels"][i, a])] = labels["cls_weight"][i, a]
                num_pos += 1
        cls_total = cls_total + varifocal_poly(logits[i], targets).sum()
        for a in labels["reg_mask"][i].nonzero().flatten().tolist():
            w = float(labels["reg_weight"][i, a])
            box = boxes[i][labels["reg_idx"][i, a]].tolist()
            anchor = anchors[a].tolist()
            target = ssd_encode(box, anchor)
            bl1_total += w * sum(balanced_l1(abs(float(deltas[i, a, k]) - target[k])) for k in range(4))
            aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
            cx = anchor[0] + aw / 2 + float(deltas[i, a, 0]) * 0.1 * aw
            cy = anchor[1] + ah / 2 + float(deltas[i, a, 1]) * 0.1 * ah
            pw, ph = aw * math.exp(float(deltas[i, a, 2]) * 0.2), ah * math.exp(float(deltas[i, a, 3]) * 0.2)
            pred = [(cx - pw / 2) / image_size, (cy - ph / 2) / image_size, (cx + pw / 2) / image_size,
                    (cy + ph / 2) / image_size]
            siou_total += w * (1 - siou(pred, [x / image_size for x in box]))
            weight_sum += w
    weight_sum = weight_sum if weight_sum > 0 else 1.0
    return {
        "loss_cls": cls_weight * cls_total / num_pos,
        "loss_box_reg": logits.new_tensor(box_reg_weight * bl1_total / (4 * weight_sum)),
        "loss_box_iou": logits.new_tensor(box_iou_weight * siou_total / weight_sum),
    }
