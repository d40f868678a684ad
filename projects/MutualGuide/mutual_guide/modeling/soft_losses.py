"""
The elementwise losses of the authors' code at 108b4a8 that the paper's code did not have: a varifocal
classification loss on soft targets with a Poly-1 term (their `GFocalLoss`), and the SIoU box loss (their
`SIOULoss`). How they are weighted and normalised is `recipe_2023.py`'s job.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["siou_loss", "varifocal_poly_loss_sum"]


class _VarifocalPolyLossSum(torch.autograd.Function):
    """
    The summed loss with its gradient in closed form, from one pass over the [N, A, C] logits (as
    `losses._SigmoidFocalLossSum`). With p = sigmoid(x), softplus(x) = -log(1 - p) and a soft target t:

        t = 0:  L0 = alpha p^gamma softplus(x) + eps p^(gamma+1)
                dL0/dx = alpha p^gamma (gamma (1 - p) softplus(x) + p) + eps (gamma + 1) p^(gamma+1) (1 - p)
        t > 0:  L1 = t (softplus(x) - t x) + eps (1 - p)^(gamma+1)
                dL1/dx = t (p - t) - eps (gamma + 1) (1 - p)^(gamma+1) p

    The dense t = 0 term is summed over every score, then the one score of each positive anchor is patched.
    """

    @staticmethod
    def forward(ctx, logits, labels, targets, alpha, gamma, epsilon):
        # float32 at least (float64 stays: gradcheck), no copy for float32 logits, which are never written to
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))
        p = torch.sigmoid(x)
        grad = F.softplus(x)  # becomes dL0/dx in place below
        p_gamma = p * p if gamma == 2.0 else p.pow(gamma)
        loss = alpha * (p_gamma * grad).sum() + epsilon * (p_gamma * p).sum()  # every score as a negative

        q = torch.sub(1.0, p)
        grad.mul_(q).mul_(alpha * gamma).add_(p, alpha=alpha)
        grad.add_(q.mul_(p).mul_(epsilon * (gamma + 1))).mul_(p_gamma)
        del p, q, p_gamma

        positive = targets > 0
        idx = labels.clamp(0, logits.shape[-1] - 1).unsqueeze(-1)
        t = targets.to(x.dtype)
        x_pos = x.gather(-1, idx).squeeze(-1)
        p_pos = torch.sigmoid(x_pos)
        softplus_pos = F.softplus(x_pos)
        # the positive score was summed as a negative above: take that out, add its positive term
        loss0_pos = alpha * p_pos.pow(gamma) * softplus_pos + epsilon * p_pos.pow(gamma + 1)
        q_pos = (1 - p_pos).pow(gamma + 1)
        loss1 = t * (softplus_pos - t * x_pos) + epsilon * q_pos
        loss = loss + ((loss1 - loss0_pos) * positive).sum()

        grad1 = t * (p_pos - t) - epsilon * (gamma + 1) * q_pos * p_pos
        at_label = torch.where(positive, grad1, grad.gather(-1, idx).squeeze(-1))
        grad.scatter_(-1, idx, at_label.unsqueeze(-1))
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logits_dtype), None, None, None, None, None


def varifocal_poly_loss_sum(
    logits: Tensor, labels: Tensor, targets: Tensor, alpha: float = 0.75, gamma: float = 2.0, epsilon: float = 1.0
) -> Tensor:
    """
    Sum over [N, A, C] scores of the authors' 2023 classification loss (their `GFocalLoss` at 108b4a8), in
    float32. Each anchor has a soft target t = `targets` [N, A] for its class `labels` [N, A] (read where t > 0)
    and 0 for every other class; with p = sigmoid(logit) and BCE the binary cross-entropy:

        t > 0:  t * BCE(p, t) + eps (1 - p)^(gamma+1)
        t = 0:  alpha p^gamma * BCE(p, 0) + eps p^(gamma+1)

    A varifocal loss (VarifocalNet, Zhang et al. 2021: positives weighted by their target, negatives focal) plus
    PolyLoss's Poly-1 term eps (1 - p_t)^(gamma+1) (Leng et al. 2022), p_t = p on positives, 1 - p on negatives:
    on a soft positive it pulls p towards 1, not towards t. (The line their code leaves commented out is the
    quality focal loss's |t - p|^gamma weight.) Their 1 - (1 - p) is written p here (equal up to rounding).
    """
    with torch.autocast(logits.device.type, enabled=False):
        return _VarifocalPolyLossSum.apply(logits, labels, targets, float(alpha), float(gamma), float(epsilon))


def siou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7, centre_eps: float = 0.0) -> Tensor:
    """
    1 - SIoU (Gevorgyan 2022) of [..., 4] XYXY `pred` against `target` boxes, elementwise ([...]), as the
    authors' `SIOULoss` at 108b4a8 (itself after YOLOv6's):

        SIoU = IoU - (distance_cost + shape_cost) / 2, IoU = inter / (union + eps)
        angle_cost    = sin(2 alpha), alpha the angle of the centre offset (s_x, s_y) to the nearer axis
        distance_cost = 2 - exp(-(2 - angle_cost) (s_x / c_w)^2) - exp(-(2 - angle_cost) (s_y / c_h)^2)
        shape_cost    = (1 - exp(-|w1 - w2| / max(w1, w2)))^4 + the same for heights

    c_w, c_h: the enclosing box's sides. `eps` enters the union in absolute units: the authors measure in the
    frame of the image side (coordinates in [0, 1]). Their code has no `centre_eps`: when the two centres
    coincide exactly, alpha is 0 / 0 and the loss NaN. YOLOv6 adds `centre_eps` (1e-7 there) to s_x and s_y.
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = pred.unbind(-1)
    b2_x1, b2_y1, b2_x2, b2_y2 = target.unbind(-1)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    s_cw = (b2_x1 + b2_x2 - b1_x1 - b1_x2) * 0.5 + centre_eps
    s_ch = (b2_y1 + b2_y2 - b1_y1 - b1_y2) * 0.5 + centre_eps
    sigma = torch.pow(s_cw**2 + s_ch**2, 0.5)
    sin_alpha_1 = torch.abs(s_cw) / sigma
    sin_alpha_2 = torch.abs(s_ch) / sigma
    sin_alpha = torch.where(sin_alpha_1 > math.sqrt(2.0) / 2, sin_alpha_2, sin_alpha_1)
    angle_cost = torch.cos(torch.arcsin(sin_alpha) * 2 - math.pi / 2)
    gamma = angle_cost - 2
    distance_cost = 2 - torch.exp(gamma * (s_cw / cw) ** 2) - torch.exp(gamma * (s_ch / ch) ** 2)
    omega_w = torch.abs(w1 - w2) / torch.max(w1, w2)
    omega_h = torch.abs(h1 - h2) / torch.max(h1, h2)
    shape_cost = torch.pow(1 - torch.exp(-omega_w), 4) + torch.pow(1 - torch.exp(-omega_h), 4)
    return 1.0 - (iou - 0.5 * (distance_cost + shape_cost))
