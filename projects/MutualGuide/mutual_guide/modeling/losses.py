"""
The two training losses: sigmoid focal loss for classification, balanced L1 for box regression.

Both are computed in float32 whatever the network ran in (autocast or `half()`), with masks rather than
data-dependent indexing, and with counts kept as tensors: a training step reads nothing back from the device here.
"""
import math
from typing import Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils import comm

from mutual_guide.modeling.assignment import AnchorLabels

__all__ = [
    "IGNORE_RULES",
    "balanced_l1_loss",
    "global_normalizers",
    "matched_boxes",
    "mutual_guide_losses",
    "sigmoid_focal_loss_sum",
]

IGNORE_RULES = ("anchor", "class")


def balanced_l1_loss(input: Tensor, target: Tensor, alpha: float = 0.5, gamma: float = 1.5, beta: float = 0.11):
    """
    Elementwise balanced L1 loss (Pang et al., Libra R-CNN, CVPR 2019, Eq. 8), x = |input - target|:

        L(x) = alpha / b * (b x + 1) * ln(b x / beta + 1) - alpha x      if x < beta
               gamma x + gamma / b - alpha beta                           otherwise,    b = e^(gamma / alpha) - 1

    continuous at beta, with slope gamma above it (beta = 1 also makes the slope continuous; the authors use the
    mmdetection form with beta = 0.11, as here). L(0) = 0. Neither detectron2 nor fvcore has it.
    """
    diff = torch.abs(input - target)
    b = math.exp(gamma / alpha) - 1
    return torch.where(
        diff < beta,
        alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff,
        gamma * diff + gamma / b - alpha * beta,
    )


class _SigmoidFocalLossSum(torch.autograd.Function):
    """
    The summed focal loss with its gradient written in closed form, both from one pass over the [N, A, C] logits.

    With p = sigmoid(x) and softplus(x) = -log(1 - p), the two elementwise terms and their derivatives are

        negative  L- = (1 - alpha) p^gamma softplus(x)        dL-/dx = (1 - alpha) p^gamma (gamma (1 - p) softplus(x) + p)
        positive  L+ = alpha (1 - p)^gamma softplus(-x)       dL+/dx = -alpha (1 - p)^gamma (gamma p softplus(-x) + 1 - p)

    The forward computes the dense negative term once, sums it, and turns the same buffer into its derivative
    (for gamma = 1: (1 - p) L + p^2, one `lerp`); the few positive and ignored scores are then patched in with
    gathers and scatters of one score per anchor. Autograd would instead keep p and softplus(x) and allocate
    some eight more [N, A, C] tensors in the backward pass; here the backward is one multiplication.
    """

    @staticmethod
    def forward(ctx, logits, cls_labels, ignored_class, alpha, gamma, ignore):
        num_classes = logits.shape[-1]
        # float32 at least (float64 stays: gradcheck), no copy for float32 logits, which are never written to below
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))
        p = torch.sigmoid(x)
        grad = F.softplus(x)
        if gamma != 1.0:
            p_gamma = p.pow(gamma)
            grad.mul_(p_gamma)  # L- / (1 - alpha)
        else:
            grad.mul_(p)
        per_anchor = grad.sum(-1)  # [N, A]

        positive = (cls_labels >= 0) & (cls_labels < num_classes)
        label_idx = cls_labels.clamp(0, num_classes - 1).unsqueeze(-1)
        # the positive score was counted as a negative above: take it out, add its positive term
        per_anchor = per_anchor - grad.gather(-1, label_idx).squeeze(-1) * positive
        if ignore == "class":
            # an ignored anchor trains its other C - 1 scores as negatives, not the one of its object's class
            ignored = (cls_labels == -1) & (ignored_class < num_classes)
            ignored_idx = ignored_class.clamp(max=num_classes - 1).unsqueeze(-1)
            per_anchor = per_anchor - grad.gather(-1, ignored_idx).squeeze(-1) * ignored
            trained = None
        else:
            # the paper's code: an ignored anchor has no classification term at all
            trained = cls_labels != -1
            per_anchor = per_anchor * trained

        x_pos = x.gather(-1, label_idx).squeeze(-1)  # [N, A]
        p_pos = torch.sigmoid(x_pos)
        q_gamma = (1 - p_pos).pow(gamma)
        soft_neg = F.softplus(-x_pos)  # -log(p)
        loss_pos = (alpha * q_gamma * soft_neg * positive).sum()
        loss = (1 - alpha) * per_anchor.sum() + loss_pos

        # the buffer becomes dL/dx of the negative term, in place
        if gamma != 1.0:
            p_gamma.mul_(p)  # p^(gamma + 1)
            grad.mul_(p.neg_().add_(1)).mul_(gamma).add_(p_gamma)
            del p_gamma
        else:
            grad.lerp_(p, p)  # L + p (p - L) = (1 - p) L + p^2
        del p
        scale = torch.full_like(per_anchor, 1 - alpha) if trained is None else trained * (1 - alpha)
        grad.mul_(scale.unsqueeze(-1))
        grad_pos = -alpha * q_gamma * (gamma * p_pos * soft_neg + (1 - p_pos))
        at_label = torch.where(positive, grad_pos, grad.gather(-1, label_idx).squeeze(-1))
        grad.scatter_(-1, label_idx, at_label.unsqueeze(-1))
        if ignore == "class":
            kept = grad.gather(-1, ignored_idx).squeeze(-1)
            grad.scatter_(-1, ignored_idx, kept.masked_fill(ignored, 0.0).unsqueeze(-1))
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logits_dtype), None, None, None, None, None


def sigmoid_focal_loss_sum(
    logits: Tensor,
    cls_labels: Tensor,
    ignored_class: Tensor,
    alpha: float = 0.25,
    gamma: float = 1.0,
    ignore: str = "anchor",
) -> Tensor:
    """
    Sum of the sigmoid focal loss (Lin et al., RetinaNet) over [N, A, C] scores, p = sigmoid(logit), in float32:

        -alpha (1 - p)^gamma log(p)            for the score of an anchor's positive class,
        -(1 - alpha) p^gamma log(1 - p)        for every other score,

    except at ignored anchors (cls_labels == -1), which `ignore` decides:
        "anchor": all C scores of an ignored anchor are left out (the paper's code, fd2c4cc's multibox_loss.py, where the
                  classification loss runs over positive and negative anchors only);
        "class":  only the score of `ignored_class` is left out, the other C - 1 are trained as negatives (the
                  authors' later code, from commit a192256).

    The same numbers as fvcore's `sigmoid_focal_loss` on a one-hot target, which however makes a dense target
    and some ten [N, A, C] temporaries: with 80 classes and 12750 anchors that dominated a CPU training step.
    See `_SigmoidFocalLossSum` for the closed-form gradient.
    """
    if ignore not in IGNORE_RULES:
        raise ValueError(f"ignore must be one of {IGNORE_RULES}, got {ignore!r}")
    with torch.autocast(logits.device.type, enabled=False):
        return _SigmoidFocalLossSum.apply(logits, cls_labels, ignored_class, float(alpha), float(gamma), ignore)


def global_normalizers(counts: Tensor, minimum: Optional[float] = 1.0) -> Tensor:
    """
    Loss normalisers from per-process counts (e.g. of positives), such that N processes of batch B give the
    gradient of one process of batch N * B.

    DDP averages gradients over the N processes: (1/N) sum_i grad(S_i / d_i). With d_i = max(1, sum_j n_j) / N
    that is grad(sum_i S_i) / max(1, sum_j n_j), the single-process loss of the whole batch. The logged losses
    (averaged over processes by the trainer) are then the single-process losses too. One all-reduce of the
    stacked counts, no host synchronisation; a single process divides by max(1, n). `minimum` None: no floor
    (sums of soft weights, or the authors' 2023 division by a count that may be 0).
    """
    world_size = comm.get_world_size()
    if world_size > 1:
        counts = counts.detach().clone()
        dist.all_reduce(counts)
    if minimum is not None:
        counts = counts.clamp(min=minimum)
    return counts / world_size


def matched_boxes(gt_boxes: Tensor, box_idx: Tensor, mask: Tensor, anchors: Tensor) -> Tensor:
    """
    [N, A, 4] float32: at each anchor where `mask` ([N, A]) is set, box `box_idx` of its image's `gt_boxes`
    ([N, G, 4], padded); elsewhere the anchor itself ([A, 4]), a harmless target (finite deltas, IoU 1) that the
    losses then mask out. Dense and masked: no nonzero, no host read.
    """
    n, a = mask.shape
    if gt_boxes.shape[1] == 0:  # no box in the batch: one padding box to gather from (masked out anyway)
        gt_boxes = gt_boxes.new_zeros(n, 1, 4)
    matched = gt_boxes.float().gather(1, box_idx.unsqueeze(-1).expand(n, a, 4))
    return torch.where(mask.unsqueeze(-1), matched, anchors.float())


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
        logits: [N, A, C] class logits (any float dtype; the losses run in float32).
        deltas: [N, A, 4] box deltas in `box2box_transform`'s encoding (weights (10, 10, 5, 5) are SSD's
            variances 0.1 / 0.2).
        anchors: [A, 4] XYXY.
        gt_boxes: [N, G, 4] XYXY, padded.
        labels: from an anchor matcher of `assignment.py`.
    Returns:
        loss_cls: cls_weight * sum of the sigmoid focal loss over every (anchor, class) score except those of
            ignored anchors that `ignore` leaves out (see `sigmoid_focal_loss_sum`), divided by the number of
            classification positives of the batch (at least 1; over all processes, see `global_normalizers`).
        loss_box_reg: box_weight * sum of the balanced L1 loss over the 4 deltas of regression positives, divided by
            4 x their number (at least 1, over all processes). 0, still in the graph, when there is none.
    """
    num_classes = logits.shape[-1]
    positive = (labels.cls_labels >= 0) & (labels.cls_labels < num_classes)
    num_cls, num_reg = global_normalizers(torch.stack([positive.sum(), labels.reg_mask.sum()]).float())
    loss_cls = sigmoid_focal_loss_sum(
        logits, labels.cls_labels, labels.ignored_class, focal_alpha, focal_gamma, ignore=ignore
    )

    with torch.autocast(deltas.device.type, enabled=False):
        # dense over all anchors, masked: no nonzero. Anchors that do not regress get their own box as target
        # (finite deltas, then masked out) instead of the padding's empty box.
        n, a = labels.reg_mask.shape
        anchors = anchors.float()
        reg_mask = labels.reg_mask.unsqueeze(-1)
        matched = matched_boxes(gt_boxes, labels.reg_idx, labels.reg_mask, anchors)
        target_deltas = box2box_transform.get_deltas(anchors.repeat(n, 1), matched.view(-1, 4)).view(n, a, 4)
        deltas = deltas.to(torch.promote_types(deltas.dtype, torch.float32))
        loss_box = balanced_l1_loss(deltas, target_deltas, alpha=bl1_alpha, gamma=bl1_gamma, beta=bl1_beta)
        loss_box = (loss_box * reg_mask).sum()
    return {"loss_cls": cls_weight * loss_cls / num_cls, "loss_box_reg": box_weight * loss_box / (4 * num_reg)}
