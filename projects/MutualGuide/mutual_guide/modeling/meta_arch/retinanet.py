"""
Mutual guidance on detectron2's own RetinaNet: `MODEL.META_ARCHITECTURE "MutualGuideRetinaNet"`.

With `MODEL.MUTUAL_GUIDE.ENABLED False` this is detectron2's `RetinaNet` unchanged (its `Matcher`, labels, losses
and inference). With it True, the anchors are labelled by the paper's `MutualGuidanceMatcher` (assignment.py),
the same object `MutualGuideDetector` uses, and each loss runs over the anchors its task was given.

What is the paper's (Zhang et al., ACCV 2020, Sec. 3, and the authors' code at fd2c4cc):
  * localize to classify: an object's classification positives (and ignored anchors) are the anchors whose
    *predicted box* fits it best, as many as the IoU rule would give it (counted on anchor IoU with the low and
    high thresholds, after each anchor is kept only for its best object);
  * classify to localize: its regression positives are the anchors of highest anchor IoU ** ((2 - p) / 2), p the
    predicted probability of its class, as many as its IoU positives;
  * ties and the "each object's best anchor counts" rule of the authors' code (see `MutualGuidanceMatcher`);
  * each loss normalised by the number of anchors it trains: the focal loss by the classification positives,
    the box loss by the regression positives (the paper's MultiBoxLoss, with the batch's counts).
What is adapted to RetinaNet (not in the paper, which uses 6 anchors per location, square inputs, a balanced-L1
box loss and focal gamma 1):
  * detectron2's RetinaNet anchors (9 per location: 3 sizes x 3 aspect ratios, P3-P7), its box transform
    (`MODEL.RETINANET.BBOX_REG_WEIGHTS`), its thresholds (`MODEL.RETINANET.IOU_THRESHOLDS`, IoU labels must be
    the [0, -1, 1] of RetinaNet), its focal loss settings and its box loss (`BBOX_REG_LOSS_TYPE`: smooth L1 with
    `SMOOTH_L1_LOSS_BETA`, or GIoU...);
  * its normalisers are RetinaNet's exponential moving averages (momentum 0.9, from 100) of those counts, one
    per loss, instead of the batch's counts;
  * inputs of several sizes padded into one batch (detectron2's `DatasetMapper` and `ImageList`): the ground
    truth is padded per image (`pad_ground_truth`) and every IoU is measured in the padded batch's pixels (IoU
    does not depend on the frame, only its last-bit ties may, which the paper's image-side frame decides; there
    is no single image side here);
  * an ignored anchor leaves out all its class scores, RetinaNet's convention and the paper's (`IGNORE "anchor"`;
    the authors' later "class" rule is not offered here).
"""
from typing import List, Optional

import torch
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from mutual_guide.modeling.assignment import AnchorLabels, AnchorMatcher, MutualGuidanceMatcher, pad_ground_truth
from mutual_guide.modeling.fusion import fold_batchnorm, fold_conv_norms
from mutual_guide.modeling.postprocessing import REMOVED_CANDIDATES, nms_with_removed
from mutual_guide.utils.detectron2_compat import (
    decode_multi_level_predictions,
    dense_box_regression_loss,
    ema_update,
    transpose_dense_predictions,
)

__all__ = ["MutualGuideRetinaNet"]


@META_ARCH_REGISTRY.register()
class MutualGuideRetinaNet(RetinaNet):
    """
    detectron2's `RetinaNet` whose `anchor_matcher` may also be one of this project's matchers (`AnchorMatcher`:
    `MutualGuidanceMatcher` or `BestAnchorIoUMatcher`). Given detectron2's `Matcher`, everything is RetinaNet's.
    """

    @configurable
    def __init__(self, **kwargs):
        """
        Args: those of detectron2's `RetinaNet`. `anchor_matcher` is detectron2's `Matcher` (RetinaNet's IoU
        assignment) or an `AnchorMatcher` built for `num_classes` classes.
        """
        super().__init__(**kwargs)
        # True (postprocessing.removed_candidates_recorded, in evaluation): outputs also hold REMOVED_CANDIDATES
        self.record_removed_candidates = False
        self._removed = []  # per image of the current forward, while recording
        matcher = self.anchor_matcher
        if isinstance(matcher, AnchorMatcher) and matcher.num_classes != self.num_classes:
            raise ValueError(
                f"anchor_matcher labels {matcher.num_classes} classes, the detector has {self.num_classes}"
            )

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        retina, mg = cfg.MODEL.RETINANET, cfg.MODEL.MUTUAL_GUIDE
        if retina.NUM_CLASSES != mg.NUM_CLASSES:
            # train_net checks the datasets' classes against MUTUAL_GUIDE.NUM_CLASSES; this model reads RETINANET's
            raise ValueError(
                f"MODEL.RETINANET.NUM_CLASSES ({retina.NUM_CLASSES}) and MODEL.MUTUAL_GUIDE.NUM_CLASSES "
                f"({mg.NUM_CLASSES}) differ: MutualGuideRetinaNet needs both set to the dataset's number of classes"
            )
        if mg.ENABLED:
            if list(retina.IOU_LABELS) != [0, -1, 1]:
                raise ValueError(
                    f"MODEL.RETINANET.IOU_LABELS must be [0, -1, 1] with mutual guidance (negative, ignored, "
                    f"positive between the two IOU_THRESHOLDS), got {list(retina.IOU_LABELS)}"
                )
            if mg.IGNORE != "anchor":
                raise ValueError(
                    f"MODEL.MUTUAL_GUIDE.IGNORE {mg.IGNORE!r} is not available on MutualGuideRetinaNet, whose ignored "
                    "anchors leave out all their class scores (RetinaNet's rule, the paper's 'anchor')"
                )
            ret["anchor_matcher"] = MutualGuidanceMatcher(retina.IOU_THRESHOLDS, retina.NUM_CLASSES)
        return ret

    def fuse_for_inference(self):
        """
        Fold every norm into its convolution (detectron2's FrozenBatchNorm2d of the ResNet, and any BatchNorm in
        eval mode), in place, for faster inference with the same outputs. Irreversible: do not train afterwards.
        """
        self.eval()
        fold_conv_norms(self)
        fold_batchnorm(self)
        return self

    # ------------------------------------------------------------------ inference
    def forward(self, batched_inputs):
        """
        RetinaNet's; while recording removed candidates, each output also holds REMOVED_CANDIDATES in the output
        image's pixels (detector_postprocess, as the detections), `kept_index` counting the detections left after
        detector_postprocess dropped the empty ones.
        """
        if self.training or not self.record_removed_candidates:
            return super().forward(batched_inputs)
        self._removed = []
        outputs = super().forward(batched_inputs)
        for output, x, removed in zip(outputs, batched_inputs, self._removed):
            instances = output["instances"]
            position = instances.get("nms_position")  # in the NMS output, of each detection left
            instances.remove("nms_position")
            height, width = x.get("height", removed.image_size[0]), x.get("width", removed.image_size[1])
            removed = detector_postprocess(removed, height, width)
            new_index = torch.full((int(position.max()) + 1 if len(position) else 0,), -1, dtype=torch.long,
                                   device=position.device)
            new_index[position] = torch.arange(len(position), device=position.device)
            inside = removed.kept_index < len(new_index)
            removed = removed[inside]
            removed.kept_index = new_index[removed.kept_index]
            output[REMOVED_CANDIDATES] = removed[removed.kept_index >= 0]
        self._removed = []
        return outputs

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        """RetinaNet's; while recording, the candidates NMS removed are kept for `forward` (`nms_with_removed`)."""
        if not self.record_removed_candidates:
            return super().inference_single_image(anchors, box_cls, box_delta, image_size)
        pred = decode_multi_level_predictions(
            self, anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        boxes = pred.pred_boxes.tensor
        kept, removed, removed_by = nms_with_removed(
            boxes, pred.scores, pred.pred_classes, self.test_nms_thresh, self.max_detections_per_image
        )
        result = pred[kept]
        result.nms_position = torch.arange(len(kept), device=boxes.device)
        gone = pred[removed]
        gone.kept_index = removed_by
        self._removed.append(gone)
        return result

    @property
    def _labels_per_task(self) -> bool:
        """True when this project's matcher labels the anchors (padded, one positive set per task)."""
        return not isinstance(self.anchor_matcher, Matcher)

    def forward_training(self, images, features, predictions, gt_instances):
        """The head's outputs go on in float32, autocast off: assignment and losses in float32 (engine/precision.py)."""
        with torch.autocast(images.tensor.device.type, enabled=False):
            predictions = [[p.float() for p in level] for level in predictions]
            if not self._labels_per_task:
                return super().forward_training(images, features, predictions, gt_instances)
            pred_logits, pred_anchor_deltas = transpose_dense_predictions(self, predictions, [self.num_classes, 4])
            anchors = self.anchor_generator(features)
            labels, matched_gt_boxes = self.label_anchors(anchors, gt_instances, pred_logits, pred_anchor_deltas)
            return self.losses(anchors, pred_logits, labels, pred_anchor_deltas, matched_gt_boxes)

    def forward_inference(self, images, features, predictions):
        """RetinaNet's decoding, score selection and NMS, in float32 whatever the network ran in."""
        with torch.autocast(images.tensor.device.type, enabled=False):
            predictions = [[p.float() for p in level] for level in predictions]
            return super().forward_inference(images, features, predictions)

    @torch.no_grad()
    def label_anchors(
        self,
        anchors: List[Boxes],
        gt_instances: List[Instances],
        pred_logits: Optional[List[Tensor]] = None,
        pred_anchor_deltas: Optional[List[Tensor]] = None,
    ):
        """
        With detectron2's `Matcher`: `RetinaNet.label_anchors` (predictions not read).

        With an `AnchorMatcher`:
        Args:
            anchors: #levels Boxes, (Hi * Wi * A, 4) each, in the padded batch's pixels.
            gt_instances: N Instances with `gt_boxes` and `gt_classes`.
            pred_logits, pred_anchor_deltas: #levels (N, Hi * Wi * A, C or 4) predictions, needed by a matcher
                whose `uses_predictions` (mutual guidance); read without gradient.
        Returns:
            AnchorLabels ([N, R] each, R = sum(Hi * Wi * A)) and the box each anchor regresses to, (N, R, 4)
            (meaningful at `reg_mask` only).
        """
        if not self._labels_per_task:
            return super().label_anchors(anchors, gt_instances)
        anchors = Boxes.cat(anchors).tensor  # (R, 4)
        gt_boxes, gt_classes, valid = pad_ground_truth(gt_instances)
        predictions = {}
        if self.anchor_matcher.uses_predictions:
            if pred_logits is None or pred_anchor_deltas is None:
                raise ValueError(f"{type(self.anchor_matcher).__name__} needs pred_logits and pred_anchor_deltas")
            deltas = cat(pred_anchor_deltas, dim=1)
            n, r = deltas.shape[:2]
            pred_boxes = self.box2box_transform.apply_deltas(deltas.reshape(n * r, 4), anchors.repeat(n, 1))
            predictions = {"pred_boxes": pred_boxes.view(n, r, 4), "pred_logits": cat(pred_logits, dim=1)}
        counts = [len(x) for x in gt_instances]
        labels = self.anchor_matcher(anchors, gt_boxes, gt_classes, valid, counts=counts, **predictions)
        if gt_boxes.shape[1] == 0:
            matched_gt_boxes = anchors.new_zeros(len(gt_instances), len(anchors), 4)
        else:
            matched_gt_boxes = gt_boxes.gather(1, labels.reg_idx.unsqueeze(-1).expand(-1, -1, 4))
        return labels, matched_gt_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """
        With detectron2's `Matcher`: `RetinaNet.losses`. With an `AnchorMatcher`, `gt_labels` is its
        `AnchorLabels` and `gt_boxes` the (N, R, 4) boxes of `label_anchors`: RetinaNet's focal loss over the
        classification positives and negatives (`cls_labels` >= 0) and its box loss over the regression positives
        (`reg_mask`), each divided by RetinaNet's moving average of the number of its own positives.
        RetinaNet.losses is not reused because it draws both tasks' anchors from one label vector.
        """
        if not isinstance(gt_labels, AnchorLabels):
            return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        cls_labels, reg_mask = gt_labels.cls_labels, gt_labels.reg_mask
        num_images = len(cls_labels)
        valid_mask = cls_labels >= 0
        pos_mask = valid_mask & (cls_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        num_reg_anchors = reg_mask.sum().item()
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        storage.put_scalar("num_reg_positives", num_reg_anchors / num_images)
        cls_normalizer = ema_update(self, "loss_normalizer", max(num_pos_anchors, 1), 100)
        box_normalizer = ema_update(self, "loss_box_normalizer", max(num_reg_anchors, 1), 100)

        # no loss for the last (background) column, as RetinaNet
        target = F.one_hot(cls_labels[valid_mask], num_classes=self.num_classes + 1)[:, :-1]
        loss_cls = sigmoid_focal_loss_jit(
            cat(pred_logits, dim=1)[valid_mask],
            target.to(pred_logits[0].dtype),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        loss_box_reg = dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            list(gt_boxes),
            reg_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls / cls_normalizer, "loss_box_reg": loss_box_reg / box_normalizer}
