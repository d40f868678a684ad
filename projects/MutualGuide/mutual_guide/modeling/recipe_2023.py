"""
The training losses of the authors' code at 108b4a8 (`MultiBoxLoss` in utils/loss/multibox_loss.py), for its
mutual guidance (`dynamic_assignment.DynamicMutualGuidanceMatcher`) and for its IoU baseline
(`assignment.BestAnchorIoUMatcher`). Selected by MODEL.MUTUAL_GUIDE.RECIPE "authors_2023"; docs/recipe_2023.md.

Their single scalar is the sum of the terms returned here. Three bugs of that code are followed unless their
fix is asked for (`Authors2023Losses` arguments, MODEL.MUTUAL_GUIDE.RECIPE_2023.FIX_*):

* baseline labels: their datasets number classes from 0, and their mutual guidance branch adds 1 before
  dropping the background column of its one-hot targets, but the baseline branch does not: an object of class
  c trains class c - 1, one of class 0 trains nothing (its anchors are negatives of every class, and its
  ignored anchors leave out no score). The regression is not affected.
* empty batch: the classification losses divide by the batch's positives and the baseline's box loss is a mean
  over them, with no floor: a batch without any positive gives an infinite or NaN loss (their GradScaler then
  skips the step; detectron2's trainer stops with FloatingPointError).
* SIoU centres: 1 - SIoU is NaN where a predicted box and its object have exactly the same centre
  (`soft_losses.siou_loss`).
"""
from typing import Dict, Sequence, Union

import torch
from torch import Tensor

from detectron2.modeling.box_regression import Box2BoxTransform

from mutual_guide.modeling.assignment import AnchorLabels
from mutual_guide.modeling.dynamic_assignment import SoftAnchorLabels
from mutual_guide.modeling.losses import balanced_l1_loss, global_normalizers, matched_boxes, sigmoid_focal_loss_sum
from mutual_guide.modeling.soft_losses import siou_loss, varifocal_poly_loss_sum

__all__ = ["Authors2023Losses", "shift_labels_as_authors"]

# YOLOv6's offset on the SIoU centre distances, the fix of the NaN at coinciding centres
SIOU_CENTRE_EPS = 1e-7


def shift_labels_as_authors(labels: AnchorLabels, num_classes: int) -> AnchorLabels:
    """
    The classification labels the baseline of the authors' code at 108b4a8 trains on: class c as c - 1, class 0
    as background (positives become negatives; ignored anchors stay ignored but leave out no score, the "class"
    ignore rule with `ignored_class` C). Regression labels unchanged.
    """
    c = num_classes
    cls = labels.cls_labels
    shifted = torch.where((cls >= 1) & (cls < c), cls - 1, torch.where(cls == 0, torch.full_like(cls, c), cls))
    ign = labels.ignored_class
    ignored_class = torch.where((ign >= 1) & (ign < c), ign - 1, torch.full_like(ign, c))
    return labels._replace(cls_labels=shifted, ignored_class=ignored_class)


class Authors2023Losses:
    """
    A callable: (predictions, anchors, ground truth, AnchorLabels) -> named loss terms, detectron2 style.

    Mutual guidance (labels with soft weights; w_reg, w_cls the regression and classification weights):
        loss_cls     = cls_weight * sum of `varifocal_poly_loss_sum` (soft target w_cls at each positive's class)
                       / #(anchors with w_cls > 0)
        loss_box_reg = box_reg_weight * sum_a w_reg(a) * sum_k balanced_l1(delta_k - target_k) / (4 sum_a w_reg(a))
        loss_box_iou = box_iou_weight * sum_a w_reg(a) * (1 - SIoU(decoded box, object)) / sum_a w_reg(a)
    i.e. their weights / weights.sum() over the [P, 4] expanded weights, and the focal loss over the count of
    positive targets; both weighted means are 0 when there is no regression positive (their empty sums).
    IoU baseline (hard labels, their "class" ignore rule):
        loss_cls     = baseline_cls_weight * sum of the sigmoid focal loss / #classification positives
        loss_box_reg = box_reg_weight * mean of balanced L1 over the 4 deltas of the regression positives
    SIoU is measured in the frame of the image side (coordinates / S), as theirs. Normalisers are summed over
    processes (`losses.global_normalizers`): N processes of batch B give the loss of one of batch N * B.
    Everything runs in float32.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        mutual_guidance: bool,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        poly_epsilon: float = 1.0,
        cls_weight: float = 2.0,
        box_reg_weight: float = 1.0,
        box_iou_weight: float = 2.0,
        balanced_l1: Sequence[float] = (0.5, 1.5, 0.11),
        baseline_focal_alpha: float = 0.25,
        baseline_focal_gamma: float = 2.0,
        baseline_cls_weight: float = 2.0,
        fix_baseline_labels: bool = False,
        fix_empty_batch: bool = False,
        fix_siou_centres: bool = False,
    ):
        """
        Args:
            num_classes: C.
            mutual_guidance: the losses of their mutual guidance (soft labels) or of their IoU baseline.
            vfl_alpha, vfl_gamma, poly_epsilon, cls_weight: their `GFocalLoss` (0.75, 2.0, 1.0, loss_weight 2.0).
            box_reg_weight: their `BalancedL1Loss` loss_weight (1.0); `balanced_l1` its (alpha, gamma, beta).
            box_iou_weight: their `SIOULoss` loss_weight (2.0).
            baseline_focal_alpha, baseline_focal_gamma, baseline_cls_weight: their `FocalLoss` (0.25, 2.0, 2.0).
            fix_baseline_labels, fix_empty_batch, fix_siou_centres: fix the bugs of the module docstring.
        """
        self.num_classes = num_classes
        self.mutual_guidance = mutual_guidance
        self.vfl = (float(vfl_alpha), float(vfl_gamma), float(poly_epsilon))
        self.weights = (float(cls_weight), float(box_reg_weight), float(box_iou_weight))
        self.balanced_l1 = tuple(float(x) for x in balanced_l1)
        self.baseline_focal = (float(baseline_focal_alpha), float(baseline_focal_gamma), float(baseline_cls_weight))
        self.fix_baseline_labels = fix_baseline_labels
        self.fix_empty_batch = fix_empty_batch
        self.siou_centre_eps = SIOU_CENTRE_EPS if fix_siou_centres else 0.0

    def __repr__(self):
        fixes = [name for name in ("baseline_labels", "empty_batch") if getattr(self, f"fix_{name}")]
        fixes += ["siou_centres"] if self.siou_centre_eps else []
        kind = "mutual guidance" if self.mutual_guidance else "IoU baseline"
        return f"{type(self).__name__}({kind}, fixes={fixes})"

    def __call__(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        gt_boxes: Tensor,
        labels: Union[AnchorLabels, SoftAnchorLabels],
        box2box_transform: Box2BoxTransform,
        image_size: float,
    ) -> Dict[str, Tensor]:
        """
        Args:
            logits: [N, A, C]; deltas: [N, A, 4] in `box2box_transform`'s encoding; anchors: [A, 4] XYXY pixels;
            gt_boxes: [N, G, 4] XYXY pixels, padded; labels: from the matcher of the same kind;
            image_size: S, the side of the square input (SIoU's frame).
        Returns:
            {"loss_cls", "loss_box_reg"} and, for mutual guidance, "loss_box_iou".
        """
        if self.mutual_guidance:
            if not isinstance(labels, SoftAnchorLabels):
                raise ValueError("the authors' 2023 mutual guidance losses need soft weights "
                                 "(DynamicMutualGuidanceMatcher's labels)")
            return self._mutual_guidance_losses(logits, deltas, anchors, gt_boxes, labels, box2box_transform,
                                                image_size)
        return self._baseline_losses(logits, deltas, anchors, gt_boxes, labels, box2box_transform)

    def _normalizers(self, values: Tensor) -> Tensor:
        """Counts summed over processes, floored at 1 only under the empty-batch fix (their bug: no floor)."""
        return global_normalizers(values, minimum=1.0 if self.fix_empty_batch else None)

    def _box_targets(self, deltas, anchors, gt_boxes, reg_idx, reg_mask, box2box_transform):
        n, a = reg_mask.shape
        anchors = anchors.float()
        matched = matched_boxes(gt_boxes, reg_idx, reg_mask, anchors)
        target_deltas = box2box_transform.get_deltas(anchors.repeat(n, 1), matched.view(-1, 4)).view(n, a, 4)
        alpha, gamma, beta = self.balanced_l1
        deltas = deltas.to(torch.promote_types(deltas.dtype, torch.float32))
        return matched, balanced_l1_loss(deltas, target_deltas, alpha=alpha, gamma=gamma, beta=beta)

    def _mutual_guidance_losses(self, logits, deltas, anchors, gt_boxes, labels, box2box_transform, image_size):
        cls_targets = labels.cls_weight
        vfl_alpha, vfl_gamma, poly_epsilon = self.vfl
        cls_weight, box_reg_weight, box_iou_weight = self.weights
        loss_cls = varifocal_poly_loss_sum(logits, labels.cls_labels, cls_targets, vfl_alpha, vfl_gamma, poly_epsilon)

        with torch.autocast(deltas.device.type, enabled=False):
            reg_weight = labels.reg_weight.float() * labels.reg_mask
            matched, loss_bl1 = self._box_targets(
                deltas, anchors, gt_boxes, labels.reg_idx, labels.reg_mask, box2box_transform
            )
            loss_bl1 = (loss_bl1.sum(-1) * reg_weight).sum()
            n, a = labels.reg_mask.shape
            pred_boxes = box2box_transform.apply_deltas(deltas.reshape(-1, 4), anchors.float().repeat(n, 1))
            pred_boxes = pred_boxes.view(n, a, 4) / image_size
            # off the positives both boxes are fixed, distinct-centred ones: finite there, with no gradient
            # (a NaN there would reach the sum through 0 * NaN, and its gradient through torch.where)
            mask = labels.reg_mask.unsqueeze(-1)
            pred_boxes = torch.where(mask, pred_boxes, pred_boxes.new_tensor([0.0, 0.0, 1.0, 1.0]))
            target_boxes = torch.where(mask, matched / image_size, matched.new_tensor([0.25, 0.5, 1.0, 1.0]))
            # their bug, followed unless fixed: no offset on the centre distances (NaN at coinciding centres)
            loss_siou = siou_loss(pred_boxes, target_boxes, centre_eps=self.siou_centre_eps)
            loss_siou = (loss_siou * reg_weight).sum()

            num_pos, weight_sum = self._normalizers(
                torch.stack([(cls_targets > 0).sum().float(), reg_weight.sum()])
            )
            # no regression positive: their sums over empty tensors are 0, here 0 / 0 would be NaN
            weight_sum = torch.where(weight_sum > 0, weight_sum, torch.ones_like(weight_sum))
        return {
            "loss_cls": cls_weight * loss_cls / num_pos,
            "loss_box_reg": box_reg_weight * loss_bl1 / (4 * weight_sum),
            "loss_box_iou": box_iou_weight * loss_siou / weight_sum,
        }

    def _baseline_losses(self, logits, deltas, anchors, gt_boxes, labels, box2box_transform):
        c = logits.shape[-1]
        if not self.fix_baseline_labels:  # their bug, followed: class c trains as c - 1 (module docstring)
            labels = shift_labels_as_authors(labels, c)
        alpha, gamma, cls_weight = self.baseline_focal
        _, box_reg_weight, _ = self.weights
        loss_cls = sigmoid_focal_loss_sum(logits, labels.cls_labels, labels.ignored_class, alpha, gamma, ignore="class")
        positive = (labels.cls_labels >= 0) & (labels.cls_labels < c)
        with torch.autocast(deltas.device.type, enabled=False):
            _, loss_box = self._box_targets(deltas, anchors, gt_boxes, labels.reg_idx, labels.reg_mask,
                                            box2box_transform)
            loss_box = (loss_box * labels.reg_mask.unsqueeze(-1)).sum()
            num_cls, num_reg = self._normalizers(torch.stack([positive.sum(), labels.reg_mask.sum()]).float())
        return {"loss_cls": cls_weight * loss_cls / num_cls, "loss_box_reg": box_reg_weight * loss_box / (4 * num_reg)}
