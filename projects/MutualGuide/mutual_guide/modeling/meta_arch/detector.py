"""The Mutual Guidance detector as a detectron2 meta-architecture.

A single-stage detector: backbone (two maps, strides 8 and 16) -> neck (a 4- or 5-level pyramid) -> head
(6 anchors per location, per-level convs). What is new is in training: which anchors each task learns from is
chosen by the other task's predictions (see `assignment.py`). MODEL.MUTUAL_GUIDE.NETWORK "mg2023" selects the
authors' later network (code at 108b4a8): maps at strides 16 and 32, a 3- or 4-level pyramid, conv unit + 1x1
conv heads.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from mutual_guide.checkpoint.paper_keys import rename_paper_keys
from mutual_guide.modeling.anchors import (
    anchors_per_level,
    generate_anchors,
    generate_normalized_anchors,
    num_levels_for,
)
from mutual_guide.modeling.assignment import AnchorMatcher, build_anchor_matcher, pad_ground_truth
from mutual_guide.modeling.assignment_stats import assignment_statistics, statistic_names
from mutual_guide.modeling.batching import GroundTruth, batch_ground_truth, batch_images
from mutual_guide.modeling.dynamic_assignment import DynamicMutualGuidanceMatcher
from mutual_guide.modeling.fusion import fold_batchnorm, fuse_repvgg_blocks
from mutual_guide.modeling.head import MutualGuideHead, MutualGuideHead2023
from mutual_guide.modeling.losses import IGNORE_RULES, mutual_guide_losses
from mutual_guide.modeling.neck import build_neck
from mutual_guide.modeling.postprocessing import NMS_RULES, REMOVED_CANDIDATES, rescale_detections, select_detections
from mutual_guide.modeling.recipe_2023 import Authors2023Losses
from mutual_guide.modeling.training_samples import put_training_samples, training_class_names
from mutual_guide.utils.detectron2_compat import transpose_dense_predictions
from mutual_guide.utils.events import put_scalars_in_background

__all__ = ["RECIPES", "MutualGuideDetector", "build_recipe"]

RECIPES = ("paper", "authors_2023")


def build_recipe(cfg) -> Tuple[AnchorMatcher, Optional[Authors2023Losses]]:
    """
    The anchor matcher and, for MODEL.MUTUAL_GUIDE.RECIPE "authors_2023", the losses of the recipe the config
    asks for (None: the paper's losses, from the detector's own loss arguments).
    """
    mg = cfg.MODEL.MUTUAL_GUIDE
    if mg.RECIPE not in RECIPES:
        raise ValueError(f"MODEL.MUTUAL_GUIDE.RECIPE must be one of {RECIPES}, got {mg.RECIPE!r}")
    if mg.RECIPE == "paper":
        return build_anchor_matcher(mg.ENABLED, mg.IOU_THRESHOLDS, mg.NUM_CLASSES), None
    r = mg.RECIPE_2023
    if mg.ENABLED:
        matcher = DynamicMutualGuidanceMatcher(mg.NUM_CLASSES, topk=r.TOPK, sigma=r.SIGMA)
    else:
        matcher = build_anchor_matcher(False, mg.IOU_THRESHOLDS, mg.NUM_CLASSES)
    losses = Authors2023Losses(
        num_classes=mg.NUM_CLASSES,
        mutual_guidance=mg.ENABLED,
        vfl_alpha=r.VFL_ALPHA,
        vfl_gamma=r.VFL_GAMMA,
        poly_epsilon=r.POLY_EPSILON,
        cls_weight=r.LOSS_CLS_WEIGHT,
        box_reg_weight=r.LOSS_BOX_REG_WEIGHT,
        box_iou_weight=r.LOSS_BOX_IOU_WEIGHT,
        balanced_l1=(mg.BALANCED_L1_ALPHA, mg.BALANCED_L1_GAMMA, mg.BALANCED_L1_BETA),
        baseline_focal_alpha=r.BASELINE_FOCAL_ALPHA,
        baseline_focal_gamma=r.BASELINE_FOCAL_GAMMA,
        baseline_cls_weight=r.BASELINE_LOSS_CLS_WEIGHT,
        fix_baseline_labels=r.FIX_BASELINE_LABELS,
        fix_empty_batch=r.FIX_EMPTY_BATCH,
        fix_siou_centres=r.FIX_SIOU_CENTRES,
    )
    return matcher, losses


@META_ARCH_REGISTRY.register()
class MutualGuideDetector(DenseDetector):
    """
    Backbone + neck + head with mutual guidance (or IoU) anchor assignment.

    Inputs follow detectron2: each dict holds "image" (BGR uint8 tensor 3 x H x W), in training "instances"
    (`gt_boxes` in the input image's pixels, `gt_classes` from 0), and optionally "height"/"width" of the
    original image, in whose pixels the predicted boxes are returned. Images must be `input_size` square: the
    dataset mapper and the predictor resize them (the paper's test transform), the model does not.
    """

    # MutualGuideCheckpointer: MODEL.WEIGHTS is a whole detector (strict), and these are its class-logit layers
    loads_whole_detectors = True
    class_logit_prefix = "head.conf."

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        neck: nn.Module,
        head: nn.Module,
        num_classes: int,
        input_size: int,
        anchor_base_size: float = 24.0,
        network: str = "mg2020",
        anchor_matcher: AnchorMatcher,
        recipe_losses: Optional[Authors2023Losses] = None,
        ignore: str = "anchor",
        box2box_transform: Box2BoxTransform,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 1.0,
        balanced_l1_alpha: float = 0.5,
        balanced_l1_gamma: float = 1.5,
        balanced_l1_beta: float = 0.11,
        loss_cls_weight: float = 1.0,
        loss_box_reg_weight: float = 1.0,
        test_score_thresh: float = 0.005,
        test_nms_thresh: float = 0.5,
        test_nms_rule: str = "per_class",
        test_topk_candidates: int = 1000,
        max_detections_per_image: int = 300,
        pixel_mean: Tuple[float, float, float],
        pixel_std: Tuple[float, float, float],
        channels_last: bool = False,
        vis_period: int = 0,
        vis_class_names: Sequence[str] = (),
        assignment_stats_period: int = 0,
    ):
        """
        Args:
            backbone, neck, head: the network; `head` gives per-level logits and deltas (`MutualGuideHead`).
            num_classes: C, object classes without background.
            input_size: S, the square input side (a multiple of 64).
            anchor_base_size: anchor side at the first level (stride 8; 2023 network: 16), doubled at each level.
            network: "mg2020" (the paper's pyramid and anchors) or "mg2023" (the authors' code at 108b4a8); it must be
                the network of `neck` (`anchors.py`).
            anchor_matcher: labels the anchors for both tasks (`assignment.py`): `MutualGuidanceMatcher` or the IoU
                baseline `BestAnchorIoUMatcher`, built for `num_classes`; or the authors' 2023 one
                (`DynamicMutualGuidanceMatcher`).
            recipe_losses: the losses of the authors' code at 108b4a8 (`recipe_2023.Authors2023Losses`, for the
                kind of `anchor_matcher`); None: the paper's losses, set by the arguments below (which the 2023
                losses do not read).
            ignore: what an ignored anchor leaves out of the focal loss, one of `IGNORE_RULES`.
            box2box_transform: box encoding (weights 10, 10, 5, 5: the SSD variances).
            focal_loss_alpha, focal_loss_gamma: the focal loss.
            balanced_l1_alpha, balanced_l1_gamma, balanced_l1_beta: the balanced L1 loss.
            loss_cls_weight, loss_box_reg_weight: weights of the two losses.
            test_score_thresh, test_nms_thresh: per-class score kept before NMS, per-class NMS IoU.
            test_nms_rule: "per_class" (the paper's) or "class_agnostic" (the authors' code at 108b4a8), see
                `postprocessing.NMS_RULES`.
            test_topk_candidates: (anchor, class) pairs kept per level and image before NMS; <= 0 keeps all.
            max_detections_per_image: detections kept per image after NMS.
            pixel_mean, pixel_std: BGR normalisation of the input.
            channels_last: run the network in the NHWC layout (weights converted here; `predict` converts inputs).
            vis_period: every this many iterations, a few training images with the anchors each task trains on
                go to the EventStorage (`training_samples.py`); 0: never.
            vis_class_names: class names written on those images' ground truth (ids when empty).
            assignment_stats_period: every this many iterations, what the assignment gave each object goes to the
                EventStorage (`assignment_stats.py`); 0: never.
        """
        super().__init__(backbone, head, head_in_features=None, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if input_size % 64 != 0:
            raise ValueError(f"INPUT.SIZE must be a multiple of 64, got {input_size}")
        self.neck = neck
        self.num_classes = num_classes
        self.input_size = input_size
        if anchor_matcher.num_classes != num_classes:
            raise ValueError(
                f"anchor_matcher labels {anchor_matcher.num_classes} classes, the detector has {num_classes}"
            )
        self.anchor_matcher = anchor_matcher
        if recipe_losses is not None:
            soft = isinstance(anchor_matcher, DynamicMutualGuidanceMatcher)
            if recipe_losses.mutual_guidance != soft or recipe_losses.num_classes != num_classes:
                raise ValueError(f"{recipe_losses!r} does not fit {anchor_matcher!r}")
        self.recipe_losses = recipe_losses
        if ignore not in IGNORE_RULES:
            raise ValueError(f"MODEL.MUTUAL_GUIDE.IGNORE must be one of {IGNORE_RULES}, got {ignore!r}")
        self.ignore = ignore
        self.box2box_transform = box2box_transform
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.balanced_l1 = (balanced_l1_alpha, balanced_l1_gamma, balanced_l1_beta)
        self.loss_weights = (loss_cls_weight, loss_box_reg_weight)
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        if test_nms_rule not in NMS_RULES:
            raise ValueError(f"MODEL.MUTUAL_GUIDE.NMS_RULE must be one of {NMS_RULES}, got {test_nms_rule!r}")
        self.test_nms_rule = test_nms_rule
        self.test_topk_candidates = test_topk_candidates
        self.max_detections_per_image = max_detections_per_image
        self.vis_period = vis_period
        self.vis_class_names = tuple(vis_class_names)
        self.assignment_stats_period = assignment_stats_period
        # True (postprocessing.removed_candidates_recorded, in evaluation): outputs also hold REMOVED_CANDIDATES
        self.record_removed_candidates = False
        self.anchor_base_size = anchor_base_size
        self.network = network
        num_levels = num_levels_for(input_size, network)
        if getattr(neck, "num_levels", num_levels) != num_levels:
            raise ValueError(
                f"The neck gives {neck.num_levels} levels, the {network} network's anchors at {input_size} px "
                f"need {num_levels}"
            )
        self.num_anchors_per_level = anchors_per_level(input_size, num_levels, network)
        # Anchors depend only on the input size: computed once, saved with nothing. The normalised copy is the
        # assignment's (see `generate_normalized_anchors`), the pixel one everything else's.
        self.register_buffer(
            "anchors", generate_anchors(input_size, anchor_base_size, num_levels, network), persistent=False
        )
        self.register_buffer(
            "normalized_anchors",
            generate_normalized_anchors(input_size, anchor_base_size, num_levels, network),
            persistent=False,
        )
        # The authors' checkpoints name the head `loc`/`conf` at the top level: renamed on load, whatever loads
        # (paper_checkpoint.py says why here and not in a checkpointer).
        self.register_load_state_dict_pre_hook(rename_paper_keys)
        self.channels_last = channels_last
        if channels_last:
            # build_model's .to(device) keeps the layout, so DDP later sees the parameters as they will train
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        neck = build_neck(cfg, backbone.output_shape())
        mg = cfg.MODEL.MUTUAL_GUIDE
        if mg.NETWORK == "mg2023":
            head = MutualGuideHead2023(
                in_channels=neck.out_channels, num_levels=neck.num_levels, num_classes=mg.NUM_CLASSES,
                conv_block=cfg.MODEL.NECK.CONV_BLOCK,
            )
        else:
            head = MutualGuideHead(
                in_channels=neck.out_channels, num_levels=neck.num_levels, num_classes=mg.NUM_CLASSES
            )
        anchor_matcher, recipe_losses = build_recipe(cfg)
        return {
            "backbone": backbone,
            "neck": neck,
            "head": head,
            "num_classes": mg.NUM_CLASSES,
            "input_size": cfg.INPUT.SIZE,
            "anchor_base_size": mg.ANCHOR_BASE_SIZE,
            "network": mg.NETWORK,
            "anchor_matcher": anchor_matcher,
            "recipe_losses": recipe_losses,
            "ignore": mg.IGNORE,
            "box2box_transform": Box2BoxTransform(weights=mg.BBOX_REG_WEIGHTS),
            "focal_loss_alpha": mg.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": mg.FOCAL_LOSS_GAMMA,
            "balanced_l1_alpha": mg.BALANCED_L1_ALPHA,
            "balanced_l1_gamma": mg.BALANCED_L1_GAMMA,
            "balanced_l1_beta": mg.BALANCED_L1_BETA,
            "loss_cls_weight": mg.LOSS_CLS_WEIGHT,
            "loss_box_reg_weight": mg.LOSS_BOX_REG_WEIGHT,
            "test_score_thresh": mg.SCORE_THRESH_TEST,
            "test_nms_thresh": mg.NMS_THRESH_TEST,
            "test_nms_rule": mg.NMS_RULE,
            "test_topk_candidates": cfg.TEST.TOPK_CANDIDATES,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "channels_last": torch.device(cfg.MODEL.DEVICE).type in mg.CHANNELS_LAST_DEVICES,
            "vis_period": cfg.VIS_PERIOD,
            "vis_class_names": training_class_names(cfg),
            "assignment_stats_period": mg.ASSIGNMENT_STATS_PERIOD,
        }

    def _apply(self, fn, *args, **kwargs):
        """Anchors stay float32 whatever dtype the network is cast to (`half()`): in float16 a 320 px
        coordinate is off by up to 0.125 px."""
        super()._apply(fn, *args, **kwargs)
        for name, make in (("anchors", generate_anchors), ("normalized_anchors", generate_normalized_anchors)):
            anchors = getattr(self, name)
            if anchors.dtype != torch.float32:
                exact = make(self.input_size, self.anchor_base_size, len(self.num_anchors_per_level), self.network)
                setattr(self, name, exact.to(anchors.device))
        return self

    def reset_class_logits(self):
        """The class-logit layers afresh, with the head's prior-probability initialisation (fine-tuning)."""
        self.head.reset_class_logits()

    def fuse_for_inference(self):
        """
        Fold BatchNorm into the convolutions and RepVGG branches into single 3x3 convs, in place, for faster
        inference with the same outputs. Irreversible: do not train the model afterwards.
        """
        self.eval()
        fuse_repvgg_blocks(self)
        fold_batchnorm(self)
        if self.channels_last:  # fused RepVGG convolutions are new, NCHW, tensors
            self.to(memory_format=torch.channels_last)
        return self

    # ------------------------------------------------------------------ network
    def predict(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """
        The network alone, on normalised images.

        Args:
            images: [N, 3, S, S], already minus the pixel mean.
        Returns:
            logits [N, A, C] and box deltas [N, A, 4], anchors ordered level, row, column, anchor
            (the order of `self.anchors` and of the paper's prior boxes).
        """
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        features = self.neck([features[f] for f in self.head_in_features])
        logits, deltas = self.head(features)
        logits, deltas = transpose_dense_predictions(self, [logits, deltas], [self.num_classes, 4])
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)

    def decode_boxes(self, deltas: Tensor) -> Tensor:
        """Boxes predicted at every anchor: deltas [N, A, 4] -> XYXY boxes [N, A, 4] in the S x S frame, unclipped."""
        anchors = self.anchors.repeat(deltas.shape[0], 1)
        return self.box2box_transform.apply_deltas(deltas.reshape(-1, 4), anchors).view(deltas.shape)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """
        Batch the S x S images (one copy to the device) and subtract the mean, in the dtype of the network's first parameters (float32, or float16 after half()).
        """
        images = batch_images(batched_inputs, self.input_size, self.device)
        images = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return ImageList(images, [(self.input_size, self.input_size)] * len(images))

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        images = self.preprocess_image(batched_inputs)
        if self.training:
            gt = batch_ground_truth(batched_inputs, self.input_size, self.device)
            logits, deltas = self.predict(images.tensor)
            return self.losses(logits, deltas, gt, images=images.tensor)
        logits, deltas = self.predict(images.tensor)
        if self.record_removed_candidates:
            results, removed = self.inference(logits, deltas, return_removed=True)
        else:
            results, removed = self.inference(logits, deltas), None
        processed = []
        for i, (result, x) in enumerate(zip(results, batched_inputs)):
            height = x.get("height", x["image"].shape[-2])
            width = x.get("width", x["image"].shape[-1])
            processed.append({"instances": rescale_detections(result, height, width)})
            if removed is not None:
                processed[-1][REMOVED_CANDIDATES] = rescale_detections(removed[i], height, width)
        return processed

    # ------------------------------------------------------------------ training
    def _ground_truth(self, gt: Union[GroundTruth, List[Instances]]) -> GroundTruth:
        if isinstance(gt, GroundTruth):
            return gt
        return GroundTruth(*pad_ground_truth(gt), counts=tuple(len(x) for x in gt))

    def label_anchors(self, logits: Tensor, deltas: Tensor, gt: Union[GroundTruth, List[Instances]]):
        """
        Assign anchors to ground truth with `self.anchor_matcher` (mutual guidance or the IoU baseline).

        Args:
            logits, deltas: [N, A, C] and [N, A, 4] predictions (detached inside).
            gt: the batch's ground truth in the S x S frame, padded (`inputs.batch_ground_truth`) or as N Instances.
        Returns:
            (gt_boxes [N, G, 4], AnchorLabels) where G is the largest number of boxes in an image.
        """
        gt = self._ground_truth(gt)
        predictions = {}
        if self.anchor_matcher.uses_predictions:
            pred_boxes = self.decode_boxes(deltas.detach()) / self.input_size
            predictions = {"pred_boxes": pred_boxes, "pred_logits": logits.detach()}
        # IoUs in the frame of the image side, as the authors' code measures them (same ties, same anchors chosen)
        labels = self.anchor_matcher(
            self.normalized_anchors, gt.boxes / self.input_size, gt.classes, gt.valid, counts=gt.counts,
            **predictions,
        )
        return gt.boxes, labels

    def losses(
        self,
        logits: Tensor,
        deltas: Tensor,
        gt: Union[GroundTruth, List[Instances]],
        images: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """
        The paper's: focal loss over positive and negative anchors, balanced L1 over regression positives; or
        those of `recipe_losses` (float32). The total loss is the sum of the terms.
        `images` (the normalised input) are drawn with the step's anchor labels every `vis_period` iterations.
        """
        gt = self._ground_truth(gt)
        gt_boxes, labels = self.label_anchors(logits, deltas, gt)
        if self.recipe_losses is not None:
            losses = self.recipe_losses(
                logits, deltas, self.anchors, gt_boxes, labels, self.box2box_transform, self.input_size
            )
            return self._log_assignment(losses, logits, gt, labels, images)
        alpha, gamma, beta = self.balanced_l1
        losses = mutual_guide_losses(
            logits,
            deltas,
            self.anchors,
            gt_boxes,
            labels,
            self.box2box_transform,
            focal_alpha=self.focal_loss_alpha,
            focal_gamma=self.focal_loss_gamma,
            bl1_alpha=alpha,
            bl1_gamma=gamma,
            bl1_beta=beta,
            cls_weight=self.loss_weights[0],
            box_weight=self.loss_weights[1],
            ignore=self.ignore,
        )
        return self._log_assignment(losses, logits, gt, labels, images)

    def _log_assignment(self, losses, logits, gt: GroundTruth, labels, images) -> Dict[str, Tensor]:
        """Positives per image every step; assignment statistics and drawings at their periods. Returns `losses`."""
        try:
            storage = get_event_storage()
        except AssertionError:  # no EventStorage outside a trainer
            return losses
        positive = (labels.cls_labels >= 0) & (labels.cls_labels < self.num_classes)
        counts = torch.stack([positive.sum(), labels.reg_mask.sum()]) / len(logits)
        put_scalars_in_background(storage, ("num_cls_positives", "num_reg_positives"), counts)
        if self.assignment_stats_period > 0 and storage.iter % self.assignment_stats_period == 0:
            stats = assignment_statistics(labels, gt.boxes, gt.valid, self.num_classes)
            put_scalars_in_background(storage, statistic_names(), stats)
        if images is not None and self.vis_period > 0 and storage.iter % self.vis_period == 0:
            put_training_samples(
                storage, images, self.pixel_mean, self.pixel_std, gt, labels, self.anchors, self.num_classes,
                self.vis_class_names,
            )
        return losses

    # ------------------------------------------------------------------ inference
    def inference(self, logits: Tensor, deltas: Tensor, return_removed: bool = False):
        """
        Per image: the best `test_topk_candidates` (anchor, class) pairs of each level whose sigmoid score is above
        the score threshold, decoded and clipped to the image, NMS per class, the best `max_detections_per_image`.
        Batched over images (see `postprocessing.select_detections`). Returns Instances in the S x S frame, in
        float32 whatever the network ran in (autocast is off here, as in the losses); with `return_removed`, also
        the candidates NMS removed (`select_detections`).
        """
        with torch.autocast(logits.device.type, enabled=False):
            return select_detections(
                logits,
                deltas,
                self.anchors,
                self.box2box_transform,
                self.input_size,
                self.num_anchors_per_level,
                score_thresh=self.test_score_thresh,
                nms_thresh=self.test_nms_thresh,
                topk_candidates=self.test_topk_candidates,
                max_detections=self.max_detections_per_image,
                return_removed=return_removed,
                nms_rule=self.test_nms_rule,
            )

