"""The Mutual Guidance detector as a detectron2 meta-architecture.

A single-stage detector: backbone (two maps, strides 8 and 16) -> neck (a 4- or 5-level pyramid) -> head
(6 anchors per location, per-level convs). What is new is in training: which anchors each task learns from is
chosen by the other task's predictions (see `assignment.py`).
"""
import logging
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds

from .anchors import generate_anchors, generate_normalized_anchors, num_levels_for
from .assignment import label_anchors, pad_ground_truth
from .head import MutualGuideHead
from .losses import IGNORE_RULES, mutual_guide_losses
from .neck import build_neck
from .paper_checkpoint import rename_paper_keys

__all__ = ["MutualGuideDetector"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MutualGuideDetector(DenseDetector):
    """
    Backbone + neck + head with mutual guidance (or IoU) anchor assignment.

    Inputs follow detectron2: each dict holds "image" (BGR uint8 tensor 3 x H x W), in training "instances"
    (`gt_boxes` in the input image's pixels, `gt_classes` from 0), and optionally "height"/"width" of the
    original image, in whose pixels the predicted boxes are returned. Images that are not `input_size` square
    are resized to it inside the model, as the paper's test transform does.
    """

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
        mutual_guidance: bool = True,
        iou_thresholds: Tuple[float, float] = (0.4, 0.5),
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
        max_detections_per_image: int = 300,
        pixel_mean: Tuple[float, float, float],
        pixel_std: Tuple[float, float, float],
        vis_period: int = 0,
    ):
        super().__init__(backbone, head, head_in_features=None, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if input_size % 64 != 0:
            raise ValueError(f"INPUT.SIZE must be a multiple of 64, got {input_size}")
        self.neck = neck
        self.num_classes = num_classes
        self.input_size = input_size
        self.mutual_guidance = mutual_guidance
        self.iou_thresholds = tuple(iou_thresholds)
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
        self.max_detections_per_image = max_detections_per_image
        self.vis_period = vis_period
        num_levels = num_levels_for(input_size)
        # Anchors depend only on the input size: computed once, saved with nothing. The normalised copy is the
        # assignment's (see `generate_normalized_anchors`), the pixel one everything else's.
        self.register_buffer("anchors", generate_anchors(input_size, anchor_base_size, num_levels), persistent=False)
        self.register_buffer(
            "normalized_anchors",
            generate_normalized_anchors(input_size, anchor_base_size, num_levels),
            persistent=False,
        )
        # The authors' checkpoints name the head `loc`/`conf` at the top level: renamed on load, whatever loads
        # (paper_checkpoint.py says why here and not in a checkpointer).
        self.register_load_state_dict_pre_hook(rename_paper_keys)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        neck = build_neck(cfg, backbone.output_shape())
        mg = cfg.MODEL.MUTUAL_GUIDE
        head = MutualGuideHead(
            in_channels=neck.out_channels, num_levels=neck.num_levels, num_classes=mg.NUM_CLASSES
        )
        return {
            "backbone": backbone,
            "neck": neck,
            "head": head,
            "num_classes": mg.NUM_CLASSES,
            "input_size": cfg.INPUT.SIZE,
            "anchor_base_size": mg.ANCHOR_BASE_SIZE,
            "mutual_guidance": mg.ENABLED,
            "iou_thresholds": mg.IOU_THRESHOLDS,
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
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "vis_period": cfg.VIS_PERIOD,
        }

    def fuse_for_inference(self):
        """
        Fold BatchNorm into the convolutions and RepVGG branches into single 3x3 convs, in place, for faster
        inference with the same outputs. Irreversible: do not train the model afterwards.
        """
        from .deploy import fold_batchnorm, fuse_repvgg_blocks

        self.eval()
        fuse_repvgg_blocks(self)
        fold_batchnorm(self)
        # oneDNN convolutions run faster on NHWC tensors on the CPU (about 1.2-1.3x here); GPUs gain too with
        # cuDNN's NHWC kernels. `predict` converts its input to the same layout.
        self.to(memory_format=torch.channels_last)
        self._channels_last = True
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
        if getattr(self, "_channels_last", False):
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        features = self.neck([features[f] for f in self.head_in_features])
        logits, deltas = self.head(features)
        logits, deltas = self._transpose_dense_predictions([logits, deltas], [self.num_classes, 4])
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)

    def decode_boxes(self, deltas: Tensor) -> Tensor:
        """Boxes predicted at every anchor: deltas [N, A, 4] -> XYXY boxes [N, A, 4] in the S x S frame, unclipped."""
        anchors = self.anchors.repeat(deltas.shape[0], 1)
        return self.box2box_transform.apply_deltas(deltas.reshape(-1, 4), anchors).view(deltas.shape)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Subtract the mean, resize to S x S when needed (aspect not kept, as the paper) and batch."""
        images = []
        for x in batched_inputs:
            image = self._move_to_current_device(x["image"]).float()
            if image.shape[-2:] != (self.input_size, self.input_size):
                image = F.interpolate(
                    image[None], size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
                )[0]
            images.append((image - self.pixel_mean) / self.pixel_std)
        sizes = [(self.input_size, self.input_size)] * len(images)
        return ImageList(torch.stack(images), sizes)

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        images = self.preprocess_image(batched_inputs)
        logits, deltas = self.predict(images.tensor)
        if self.training:
            gt_instances = [self._scaled_instances(x) for x in batched_inputs]
            return self.losses(logits, deltas, gt_instances)
        results = self.inference(logits, deltas)
        processed = []
        for result, x in zip(results, batched_inputs):
            height = x.get("height", x["image"].shape[-2])
            width = x.get("width", x["image"].shape[-1])
            # scales x and y separately: the S x S resize did not keep the aspect ratio
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    # ------------------------------------------------------------------ training
    def _scaled_instances(self, batched_input) -> Instances:
        """Ground truth in the S x S frame: scaled when the image was resized in `preprocess_image`."""
        if "instances" not in batched_input:
            raise ValueError(f"Training input {batched_input.get('file_name', '')!r} has no 'instances'")
        instances = batched_input["instances"].to(self.device)
        h, w = batched_input["image"].shape[-2:]
        boxes = instances.gt_boxes.clone()
        if (h, w) != (self.input_size, self.input_size):
            boxes.scale(self.input_size / w, self.input_size / h)
        boxes.clip((self.input_size, self.input_size))
        keep = boxes.nonempty()
        dropped = int((~keep).sum())
        if dropped:
            log_every_n_seconds(
                logging.WARNING, f"Dropped {dropped} degenerate ground-truth boxes (zero width or height)", n=30
            )
        result = Instances((self.input_size, self.input_size))
        result.gt_boxes = boxes[keep]
        result.gt_classes = instances.gt_classes[keep]
        return result

    def label_anchors(self, logits: Tensor, deltas: Tensor, gt_instances: List[Instances]):
        """
        Assign anchors to ground truth, with mutual guidance or the IoU baseline.

        Args:
            logits, deltas: [N, A, C] and [N, A, 4] predictions (detached inside).
            gt_instances: N Instances in the S x S frame.
        Returns:
            (gt_boxes [N, G, 4], AnchorLabels) where G is the largest number of boxes in an image.
        """
        gt_boxes, gt_classes, valid = pad_ground_truth(gt_instances)
        pred_boxes = None
        if self.mutual_guidance:
            pred_boxes = self.decode_boxes(deltas.detach()) / self.input_size
        # IoUs in the frame of the image side, as the authors' code measures them (same ties, same anchors chosen)
        labels = label_anchors(
            self.normalized_anchors,
            gt_boxes / self.input_size,
            gt_classes,
            valid,
            pred_boxes=pred_boxes,
            pred_logits=logits.detach() if self.mutual_guidance else None,
            mutual_guidance=self.mutual_guidance,
            thresholds=self.iou_thresholds,
            num_classes=self.num_classes,
        )
        return gt_boxes, labels

    def losses(self, logits: Tensor, deltas: Tensor, gt_instances: List[Instances]) -> Dict[str, Tensor]:
        """Focal loss over positive and negative anchors, balanced L1 over regression positives."""
        gt_boxes, labels = self.label_anchors(logits, deltas, gt_instances)
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
        try:
            storage = get_event_storage()
            storage.put_scalar("num_cls_positives", float((labels.cls_labels >= 0).logical_and(
                labels.cls_labels < self.num_classes).sum()) / len(gt_instances))
            storage.put_scalar("num_reg_positives", float(labels.reg_mask.sum()) / len(gt_instances))
        except AssertionError:  # no EventStorage outside a trainer
            pass
        return losses

    # ------------------------------------------------------------------ inference
    def inference(self, logits: Tensor, deltas: Tensor) -> List[Instances]:
        """
        Sigmoid scores, keep (anchor, class) pairs above the score threshold, decode only those, clip to the
        image, NMS per class (one batched call) and keep the best `max_detections_per_image`.
        Returns Instances in the S x S frame.
        """
        results = []
        size = (self.input_size, self.input_size)
        for logits_i, deltas_i in zip(logits, deltas):
            scores = logits_i.sigmoid().flatten()
            keep = scores > self.test_score_thresh
            scores = scores[keep]
            idx = keep.nonzero().squeeze(1)
            anchor_idx = idx // self.num_classes
            classes = idx % self.num_classes
            boxes = Boxes(self.box2box_transform.apply_deltas(deltas_i[anchor_idx], self.anchors[anchor_idx]))
            boxes.clip(size)
            keep = batched_nms(boxes.tensor, scores, classes, self.test_nms_thresh)
            keep = keep[: self.max_detections_per_image]
            result = Instances(size)
            result.pred_boxes = boxes[keep]
            result.scores = scores[keep]
            result.pred_classes = classes[keep]
            results.append(result)
        return results
