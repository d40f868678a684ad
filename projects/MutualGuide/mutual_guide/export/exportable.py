"""Export the detector to TorchScript and ONNX: the network with its box decoding, optionally with NMS.

`ExportableDetector` takes a BGR batch already resized to S x S (uint8 or float, as cv2 reads it) and returns
decoded, clipped boxes [N, A, 4] (XYXY, S x S pixels) and sigmoid scores [N, A, C]. `DetectorWithNMS` adds
the test-time selection of `MutualGuideDetector.inference` (score threshold, NMS per image and class, the best
`max_detections` per image) with fixed-shape outputs, so a batch needs no Python after the graph:

    num_detections [N] int64, boxes [N, K, 4] float, scores [N, K] float, classes [N, K] int64

where K = max_detections; row i holds num_detections[i] detections sorted by score, the rest are zeros (class -1).

In ONNX the NMS is the standard NonMaxSuppression operator (per image, per class, no coordinate offsets), so
runtimes run it natively and any batch size works. In TorchScript it is a scripted loop over images and classes
calling torchvision's nms, the same kernel `MutualGuideDetector.inference` uses.
"""
import copy
import warnings
from typing import List, Optional, Tuple

import torch
import torchvision
from torch import Tensor, nn

from mutual_guide.modeling.postprocessing import top_candidates
from mutual_guide.utils.atomic_io import atomic_path

__all__ = [
    "ExportableDetector",
    "DetectorWithNMS",
    "add_nms",
    "NMS_OUTPUT_NAMES",
    "ONNX_FLOAT32_ONLY",
    "OUTPUT_NAMES",
    "export_onnx",
    "export_torchscript",
    "prepare_for_export",
]

# Why ONNX files stay float32 whatever MODEL.PRECISION says
ONNX_FLOAT32_ONLY = (
    "ONNX Runtime's CPU provider has no bfloat16 (nor float16) convolution kernels, so a reduced-precision graph "
    "would not run there (or would run slower, cast back op by op); the ONNX file is exported in float32. Use the "
    "TorchScript export for bfloat16, or convert the float32 ONNX file for a GPU runtime with that runtime's tools."
)
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores")
NMS_OUTPUT_NAMES = ("num_detections", "boxes", "scores", "classes")


class ExportableDetector(nn.Module):
    """
    The network with its decoding: BGR images [N, 3, S, S] (uint8 or float, 0-255) ->
    boxes [N, A, 4] (XYXY in S x S pixels, clipped to the image) and sigmoid scores [N, A, C].
    With a `model` cast to bfloat16 or float16 (`prepare_for_export(..., dtype=)`), the network runs in that dtype
    and the normalisation, decoding and scores in float32.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.compute_dtype = next(model.parameters()).dtype
        self.input_size = int(model.input_size)
        self.num_classes = int(model.num_classes)
        self.num_anchors = len(model.anchors)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        images = ((images.float() - self.pixel_mean) / self.pixel_std).to(self.compute_dtype)
        logits, deltas = self.model.predict(images)
        logits, deltas = logits.float(), deltas.float()
        # the decoding MutualGuideDetector.label_anchors uses (Box2BoxTransform, weights 10, 10, 5, 5), on every anchor
        boxes = self.model.decode_boxes(deltas)
        # Boxes.clip does the same per coordinate; clamp avoids its finiteness assert, which does not trace
        boxes = boxes.clamp(min=0.0, max=float(self.input_size))
        # constant sizes, so the exported outputs have a static anchor and class dimension
        boxes = boxes.reshape(-1, self.num_anchors, 4)
        scores = logits.sigmoid().reshape(-1, self.num_anchors, self.num_classes)
        return boxes, scores


class DetectorWithNMS(nn.Module):
    """
    `network` (an ExportableDetector, or its traced version) followed by the selection of
    `MutualGuideDetector.inference`: among the best `topk_candidates` (anchor, class) pairs of each level
    (`num_anchors_per_level` anchors each; all pairs when `topk_candidates` <= 0) with a non-empty box, scores
    above `score_thresh`, greedy NMS per image and class at IoU `nms_thresh`, the best `max_detections` per
    image. Outputs are named in `NMS_OUTPUT_NAMES`.

    Keeping at most `max_detections` per class before the global top-k changes nothing: a class's NMS picks
    boxes in score order, so its boxes beyond the first `max_detections` could never reach the top-k.
    """

    def __init__(
        self,
        network: nn.Module,
        score_thresh: float,
        nms_thresh: float,
        max_detections: int,
        topk_candidates: int = 0,
        num_anchors_per_level: Optional[List[int]] = None,
    ):
        super().__init__()
        self.network = network
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.max_detections = int(max_detections)
        self.topk_candidates = int(topk_candidates)
        self.num_anchors_per_level: List[int] = [int(k) for k in (num_anchors_per_level or [])]

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes, scores = self.network(images)
        scores = self.candidate_scores(boxes, scores)
        scores_per_class = scores.transpose(1, 2).contiguous()  # [N, C, A], the layout NonMaxSuppression wants
        args = (self.score_thresh, self.nms_thresh, self.max_detections)
        if torch.jit.is_scripting():
            selected = select_per_class(boxes, scores_per_class, args[0], args[1], args[2])
        else:
            selected = _select(boxes, scores_per_class, args[0], args[1], args[2])
        return top_detections(boxes, scores_per_class, selected, self.max_detections)

    def candidate_scores(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """
        [N, A, C] scores with 0 for the pairs `MutualGuideDetector.inference` does not consider: outside the
        best `topk_candidates` of their level (when > 0), or of an anchor whose clipped box is empty.
        """
        n, c = scores.shape[0], scores.shape[2]
        if self.topk_candidates > 0 and len(self.num_anchors_per_level) > 0:
            # the model's candidates (modeling/postprocessing.top_candidates), kept in the dense layout of the graph
            values, index = top_candidates(scores, self.num_anchors_per_level, self.topk_candidates)
            scores = torch.zeros_like(scores).reshape(n, -1).scatter(1, index, values).reshape(n, -1, c)
        nonempty = (boxes[:, :, 2] > boxes[:, :, 0]) & (boxes[:, :, 3] > boxes[:, :, 1])
        return scores * nonempty.unsqueeze(2).to(scores.dtype)


def select_per_class(
    boxes: Tensor, scores: Tensor, score_thresh: float, iou_thresh: float, max_per_class: int
) -> Tensor:
    """
    What ONNX NonMaxSuppression computes, with torchvision's nms.

    Args:
        boxes: [N, A, 4] XYXY. scores: [N, C, A].
    Returns:
        [M, 3] int64 rows (image, class, anchor) of the kept boxes, per (image, class) in descending score.
    """
    rows = [torch.zeros((0, 3), dtype=torch.long, device=boxes.device)]
    for i in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = torch.nonzero(scores[i, c] > score_thresh).squeeze(1)
            if candidates.numel() == 0:
                continue
            keep = torchvision.ops.nms(boxes[i, candidates], scores[i, c, candidates], iou_thresh)
            anchors = candidates[keep[:max_per_class]]
            image_class = torch.tensor([i, c], dtype=torch.long, device=boxes.device).expand(anchors.shape[0], 2)
            rows.append(torch.cat([image_class, anchors[:, None]], dim=1))
    return torch.cat(rows)


@torch.jit.unused
def _select(boxes: Tensor, scores: Tensor, score_thresh: float, iou_thresh: float, max_per_class: int) -> Tensor:
    if torch.onnx.is_in_onnx_export():
        return _NonMaxSuppression.apply(boxes, scores, score_thresh, iou_thresh, max_per_class)
    return select_per_class(boxes, scores, score_thresh, iou_thresh, max_per_class)


class _NonMaxSuppression(torch.autograd.Function):
    """Exported as one ONNX NonMaxSuppression node (opset >= 11); runs `select_per_class` in PyTorch."""

    @staticmethod
    def forward(ctx, boxes, scores, score_thresh, iou_thresh, max_per_class):
        return select_per_class(boxes, scores, score_thresh, iou_thresh, max_per_class)

    @staticmethod
    def symbolic(g, boxes, scores, score_thresh, iou_thresh, max_per_class):
        # center_point_box=0 (default): corners; the IoU is the same whether they are given as xyxy or yxyx
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou_thresh], dtype=torch.float)),
            g.op("Constant", value_t=torch.tensor([score_thresh], dtype=torch.float)),
        )


def top_detections(
    boxes: Tensor, scores: Tensor, selected: Tensor, max_detections: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """
    The best `max_detections` kept (image, class, anchor) triples of each image, as fixed-shape tensors.

    The kept scores are scattered into a zero [N, C * A] map and one top-k per row picks them: no loop over
    images, so a traced graph serves any batch size. Scores of kept boxes are above the score threshold, hence
    positive; the zeros left in a row are padding.

    Args:
        boxes: [N, A, 4]. scores: [N, C, A]. selected: [M, 3] rows (image, class, anchor).
    Returns:
        num_detections [N], boxes [N, K, 4], scores [N, K], classes [N, K] (-1 on padding), K = max_detections
        (at most C * A).
    """
    num_classes, num_anchors = scores.shape[1], scores.shape[2]
    flat_scores = scores.flatten()
    flat_index = (selected[:, 0] * num_classes + selected[:, 1]) * num_anchors + selected[:, 2]
    kept = torch.zeros_like(flat_scores).scatter(0, flat_index, flat_scores[flat_index])
    kept = kept.reshape(scores.shape[0], num_classes * num_anchors)
    top_scores, top_index = kept.topk(max_detections, dim=1)
    classes = torch.div(top_index, num_anchors, rounding_mode="floor")
    anchor_index = top_index - classes * num_anchors
    top_boxes = boxes.gather(1, anchor_index.unsqueeze(2).expand(-1, -1, 4))
    valid = top_scores > 0
    num_detections = valid.sum(dim=1)
    top_boxes = top_boxes * valid.unsqueeze(2).to(top_boxes.dtype)
    classes = torch.where(valid, classes, torch.full_like(classes, -1))
    return num_detections, top_boxes, top_scores, classes


# ---------------------------------------------------------------------- export
def prepare_for_export(model: nn.Module, fuse: bool = True, dtype: torch.dtype = torch.float32) -> ExportableDetector:
    """
    A copy of `model` in eval mode on the model's device, RepVGG blocks fused and BatchNorm folded
    (`fuse_for_inference`) unless `fuse=False`, its weights cast to `dtype` (the network's compute dtype; the
    anchors stay float32), wrapped as an ExportableDetector. The caller's model is left untouched (fusing is
    irreversible). Exporting from a GPU gives the same ONNX graph; a TorchScript file traced there expects its
    inputs on that GPU.
    """
    model = copy.deepcopy(model).eval()
    if fuse:
        model.fuse_for_inference()
    if dtype != torch.float32:
        model.to(dtype)  # after folding: BatchNorm statistics are folded in float32 first
    for p in model.parameters():
        p.requires_grad_(False)
    return ExportableDetector(model).eval()


def example_images(size: int, batch_size: int = 1, dtype: torch.dtype = torch.uint8, seed: int = 0) -> Tensor:
    """A reproducible random BGR batch [batch_size, 3, size, size] to trace with."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8).to(dtype)


def add_nms(network: nn.Module, model: nn.Module) -> DetectorWithNMS:
    """`network` followed by the test-time selection configured in `model` (a MutualGuideDetector)."""
    if getattr(model, "test_nms_rule", "per_class") != "per_class":
        raise ValueError(
            f"The exported NMS is per class; MODEL.MUTUAL_GUIDE.NMS_RULE is {model.test_nms_rule!r}. Export without "
            "NMS (the decoded boxes and scores) and apply that rule in the runtime, or set MODEL.MUTUAL_GUIDE.NMS_RULE "
            "per_class"
        )
    # a Python int, so that top-k's k stays a constant in traced graphs
    max_detections = min(int(model.max_detections_per_image), int(model.num_classes) * len(model.anchors))
    return DetectorWithNMS(
        network,
        model.test_score_thresh,
        model.test_nms_thresh,
        max_detections,
        model.test_topk_candidates,
        model.num_anchors_per_level,
    ).eval()


def export_torchscript(
    model: nn.Module,
    path: str,
    *,
    with_nms: bool = False,
    batch_size: int = 1,
    input_dtype: torch.dtype = torch.uint8,
    fuse: bool = True,
    dtype: torch.dtype = torch.float32,
) -> str:
    """
    Save `model` (a MutualGuideDetector) as TorchScript to `path`.

    The network is traced (batch size stays free: shapes are read from the input); with `with_nms` the
    selection around it is scripted, so its loops over images and classes stay loops.
    `dtype` bfloat16 or float16: the network's weights and convolutions in that dtype (MODEL.PRECISION), the
    decoding, scores and NMS in float32; inputs and outputs are as in float32.
    Load with `torch.jit.load(path)`; call with a BGR batch [N, 3, S, S] of `input_dtype`.
    """
    network = prepare_for_export(model, fuse=fuse, dtype=dtype)
    example = example_images(network.input_size, batch_size, input_dtype).to(network.pixel_mean.device)
    with torch.no_grad():
        traced = torch.jit.trace(network, example, check_trace=False)
    module = torch.jit.script(add_nms(traced, model)) if with_nms else traced
    with atomic_path(path) as temporary:
        module.save(temporary)
    return path


def export_onnx(
    model: nn.Module,
    path: str,
    *,
    opset: int = 17,
    with_nms: bool = False,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    input_dtype: torch.dtype = torch.uint8,
    fuse: bool = True,
    dtype: torch.dtype = torch.float32,
) -> str:
    """
    Save `model` (a MutualGuideDetector) as ONNX to `path`, in float32 only (`ONNX_FLOAT32_ONLY`).

    Input "images" [N, 3, S, S] of `input_dtype` (BGR, 0-255); outputs `OUTPUT_NAMES` ("boxes" [N, A, 4],
    "scores" [N, A, C]) or with `with_nms` `NMS_OUTPUT_NAMES`. `dynamic_batch` leaves N free, otherwise it is
    `batch_size`. Uses torch's TorchScript-based exporter: the NMS node is emitted by a symbolic function,
    which the torch.export-based exporter does not use.
    """
    if opset < 11:
        raise ValueError(f"ONNX NonMaxSuppression and the decoding need opset >= 11, got {opset}")
    if dtype != torch.float32:
        raise ValueError(f"ONNX export in {str(dtype).replace('torch.', '')}: {ONNX_FLOAT32_ONLY}")
    network = prepare_for_export(model, fuse=fuse)
    module = add_nms(network, model) if with_nms else network
    example = example_images(network.input_size, batch_size, input_dtype).to(network.pixel_mean.device)
    output_names = list(NMS_OUTPUT_NAMES if with_nms else OUTPUT_NAMES)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in [INPUT_NAME] + output_names}
    with atomic_path(path) as temporary, torch.no_grad(), warnings.catch_warnings():
        # tracing runs select_per_class once, whose Python loops the NonMaxSuppression node replaces
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            temporary,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return path
