"""
The two training losses: sigmoid focal loss for classification, balanced L1 for box regression.
"""
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.modeling.box_regression import Box2BoxTransform

from .assignment import AnchorLabels

__all__ = ["IGNORE_RULES", "balanced_l1_loss", "mutual_guide_losses", "sigmoid_focal_loss_sum"]


def balanced_l1_loss(input: Tensor, target: Tensor, alpha: float = 0.5, gamma: float = 1.5, beta: float = 0.11):
    """
    Elementwise balanced L1 loss (Pang et al., Libra R-CNN, CVPR 2019, Eq. 8), x = |input - target|:

        L(x) = alpha / b * (b x + 1) * ln(b x / beta + 1) - alpha x      if x < beta
               gamma x + gamma / b - alpha beta                           otherwise,    b = e^(gamma / alpha) - 1

    continuous at beta, with slope gamma above it (beta = 1 also makes the slope continuous; the authors use the
    mmdetection form with beta = 0.11, as here). Neither detectron2 nor fvcore has it.
    """
    diff = torch.abs(input - target)
    b = math.exp(gamma / alpha) - 1
    return torch.where(
        diff < beta,
        alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff,
        gamma * diff + gamma / b - alpha * beta,
    )


IGNORE_RULES = ("anchor", "class")


def sigmoid_focal_loss_sum(
    logits: Tensor,
    cls_labels: Tensor,
    ignored_class: Tensor,
    alpha: float = 0.25,
    gamma: float = 1.0,
    ignore: str = "anchor",
) -> Tensor:
    """
    Sum of the sigmoid focal loss (Lin et al., RetinaNet) over [N, A, C] scores, p = sigmoid(logit):

        -alpha (1 - p)^gamma log(p)            for the score of an anchor's positive class,
        -(1 - alpha) p^gamma log(1 - p)        for every other score,

    except at ignored anchors (cls_labels == -1), which `ignore` decides:
        "anchor": all C scores of an ignored anchor are left out (the seed, fd2c4cc's multibox_loss.py, where the
                  classification loss runs over positive and negative anchors only);
        "class":  only the score of `ignored_class` is left out, the other C - 1 are trained as negatives (the
                  authors' later code, from commit a192256).

    The same numbers as fvcore's `sigmoid_focal_loss` on a one-hot target, which however makes a dense target
    and some ten [N, A, C] temporaries: with 80 classes and 12750 anchors that dominated a CPU training step.
    Here only the negative term is dense; the few positive and ignored scores are handled apart.
    """
    if ignore not in IGNORE_RULES:
        raise ValueError(f"ignore must be one of {IGNORE_RULES}, got {ignore!r}")
    num_classes = logits.shape[-1]
    # -log(1 - p) = softplus(logit)
    p = logits.sigmoid()
    negative = F.softplus(logits) * (p if gamma == 1 else p**gamma)
    positive_at = ((cls_labels >= 0) & (cls_labels < num_classes)).nonzero(as_tuple=True)
    # in place on the product, which autograd does not keep: these scores drop out of the negative term
    negative.index_put_((*positive_at, cls_labels[positive_at]), negative.new_zeros(()))
    if ignore == "anchor":
        negative.masked_fill_((cls_labels == -1).unsqueeze(-1), 0.0)
    else:
        ignored_at = ((cls_labels == -1) & (ignored_class < num_classes)).nonzero(as_tuple=True)
        negative.index_put_((*ignored_at, ignored_class[ignored_at]), negative.new_zeros(()))
    x = logits[(*positive_at, cls_labels[positive_at])]
    positive = F.softplus(-x) * (1 - x.sigmoid()) ** gamma  # -log(p) (1 - p)^gamma
    return (1 - alpha) * negative.sum() + alpha * positive.sum()


def mutual_guide_losses(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes: Tensor,
    labels: AnchorLabels,
    box2box_transform: Box2BoxTransform,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 1.0,
    bl1_alpha: float = 0.5,
    bl1_gamma: float = 1.5,
    bl1_beta: float = 0.11,
    cls_weight: float = 1.0,
    box_weight: float = 1.0,
    ignore: str = "anchor",
) -> Dict[str, Tensor]:
    """
    Args:
        logits: [N, A, C] class logits.
        deltas: [N, A, 4] box deltas in `box2box_transform`'s encoding (weights (10, 10, 5, 5) are SSD's
            variances 0.1 / 0.2).
        anchors: [A, 4] XYXY.
        gt_boxes: [N, G, 4] XYXY, padded.
        labels: from `assignment.label_anchors`.
    Returns:
        loss_cls: cls_weight * sum of the sigmoid focal loss over every (anchor, class) score except those of
            ignored anchors that `ignore` leaves out (see `sigmoid_focal_loss_sum`), divided by the batch's number
            of classification positives (at least 1).
        loss_box_reg: box_weight * sum of the balanced L1 loss over the 4 deltas of regression positives, divided by
            4 x their number (at least 1). 0, still in the graph, when there is none.
    """
    num_classes = logits.shape[-1]
    num_positive = int(((labels.cls_labels >= 0) & (labels.cls_labels < num_classes)).sum())
    loss_cls = sigmoid_focal_loss_sum(
        logits, labels.cls_labels, labels.ignored_class, focal_alpha, focal_gamma, ignore=ignore
    )
    loss_cls = loss_cls / max(1, num_positive)

    image_idx, anchor_idx = labels.reg_mask.nonzero(as_tuple=True)
    box_idx = labels.reg_idx[image_idx, anchor_idx]
    target_deltas = box2box_transform.get_deltas(anchors[anchor_idx], gt_boxes[image_idx, box_idx])
    # indexing keeps the (empty) selection in the graph, so an all-negative batch still gives gradients (zeros)
    loss_box = balanced_l1_loss(
        deltas[image_idx, anchor_idx], target_deltas, alpha=bl1_alpha, gamma=bl1_gamma, beta=bl1_beta
    )
    loss_box = loss_box.sum() / max(1, 4 * len(anchor_idx))
    return {"loss_cls": cls_weight * loss_cls, "loss_box_reg": box_weight * loss_box}
