"""Exported models (ONNX through onnxruntime, TorchScript) compute what the PyTorch detector computes.

Tolerances: boxes within 1e-3 px (S x S frame), scores within 1e-5 (absolute). The exported graphs are fused
(RepVGG re-parameterised, BatchNorm folded) and compared with the unfused PyTorch model, so the tolerance covers
the fusion as well as the runtime. With NMS in the graph, the detections equal `model.inference` of the same
(fused) model: same count per image and the same boxes, scores and classes after sorting.

Models have random weights made informative: BatchNorm statistics are randomised (so folding changes weights)
and the head is rescaled so that logits spread over about N(-3, 1.5) and box deltas over about N(0, 0.5).
"""
import os

import numpy as np
import pytest
import torch
from conftest import VOC_MINI
from torch import nn

from detectron2.modeling import build_model
from detectron2.structures import Boxes

import mutual_guide.modeling.backbone  # noqa: F401  (registers the backbones)
import mutual_guide.modeling.meta_arch.detector  # noqa: F401  (registers the detector)
from mutual_guide.export.exportable import (
    NMS_OUTPUT_NAMES,
    ONNX_FLOAT32_ONLY,
    OUTPUT_NAMES,
    export_onnx,
    export_torchscript,
    prepare_for_export,
)

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

BOX_ATOL = 1e-3  # pixels
SCORE_ATOL = 1e-5
BACKBONES = {"vgg16": "VGG16", "resnet18": "ResNet18", "repvgg": "RepVGG", "shufflenet": "ShuffleNetV2"}
NECKS = ["ssd", "fpn", "pafpn", "rfb"]
SLOW_BACKBONES = ("vgg16", "repvgg")  # the largest networks: several seconds per export on 2 cores


@pytest.fixture(scope="module")
def model_of(make_cfg):
    """
    model_of(backbone, neck, informative=True): the eval-mode detector of configs/mg_<backbone>_<neck>_voc.yaml with
    3 classes and random weights (made informative by `_randomise`), built once per module: prepare_for_export
    works on a copy, so no test changes it.
    """
    built = {}

    def get(backbone: str, neck: str, informative: bool = True):
        if (backbone, neck, informative) not in built:
            torch.manual_seed(0)
            cfg = make_cfg(num_classes=3, config_file=f"mg_{backbone}_{neck}_voc.yaml",
                           opts=["MODEL.BACKBONE.PRETRAINED", ""])
            model = build_model(cfg)
            if informative:
                _randomise(model)
            built[backbone, neck, informative] = model.eval()
        return built[backbone, neck, informative]

    return get


@torch.no_grad()
def _randomise(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.1, 0.1, generator=g)
    model.eval()
    # Rescale the head (it is linear in its weights) so that scores and boxes vary: the default initialisation
    # gives every score ~0.01 and every box ~its anchor, where ties would decide NMS.
    for conv in list(model.head.conf) + list(model.head.loc):
        conv.bias.zero_()
    logits, deltas = model.predict(_images(1, seed=seed + 1).float() - model.pixel_mean.view(1, 3, 1, 1))
    for conv in model.head.conf:
        conv.weight.mul_(1.5 / logits.std())
        conv.bias.fill_(-3.0)
    for conv in model.head.loc:
        conv.weight.mul_(0.5 / deltas.std())


def _images(n: int, seed: int = 0, size: int = 320) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _voc_images(size: int = 320) -> torch.Tensor:
    cv2 = pytest.importorskip("cv2")
    folder = os.path.join(VOC_MINI, "VOC2007", "JPEGImages")
    paths = [os.path.join(folder, f) for f in ("000001.jpg", "000002.jpg")]
    if not all(os.path.isfile(p) for p in paths):
        pytest.skip(f"real VOC images not found in {folder}")
    images = [cv2.resize(cv2.imread(p), (size, size), interpolation=cv2.INTER_LINEAR) for p in paths]
    return torch.as_tensor(np.stack(images).transpose(0, 3, 1, 2).copy())


@torch.no_grad()
def _reference(model, images: torch.Tensor):
    """Boxes and scores of the unfused PyTorch model, decoded with detectron2's own Boxes."""
    logits, deltas = model.predict(images.float() - model.pixel_mean.view(1, 3, 1, 1))
    boxes = []
    for d in deltas:
        b = Boxes(model.box2box_transform.apply_deltas(d, model.anchors))
        b.clip((model.input_size, model.input_size))
        boxes.append(b.tensor)
    return torch.stack(boxes), logits.sigmoid()


def _run_onnx(path: str, images: torch.Tensor):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()})]


def _assert_close(boxes, scores, ref_boxes, ref_scores, what: str):
    box_diff = float((boxes - ref_boxes).abs().max())
    score_diff = float((scores - ref_scores).abs().max())
    assert boxes.shape == ref_boxes.shape and scores.shape == ref_scores.shape, what
    assert box_diff < BOX_ATOL, f"{what}: max box difference {box_diff:.3g} px"
    assert score_diff < SCORE_ATOL, f"{what}: max score difference {score_diff:.3g}"


# ------------------------------------------------------------------ boxes and scores
PARITY_COMBOS = [  # VGG16 is covered by the export of every combination below
    pytest.param("repvgg", "fpn", marks=pytest.mark.slow),
    ("resnet18", "rfb"),
    ("shufflenet", "ssd"),
]


@pytest.mark.slow
@pytest.mark.parametrize("backbone,neck", PARITY_COMBOS)
def test_onnx_and_torchscript_equal_pytorch(backbone, neck, tmp_path, model_of):
    model = model_of(backbone, neck)
    images = _images(2, seed=5)  # exported with batch 1: the batch dimension must stay free
    ref_boxes, ref_scores = _reference(model, images)
    onnx_boxes, onnx_scores = _run_onnx(export_onnx(model, str(tmp_path / "m.onnx")), images)
    _assert_close(onnx_boxes, onnx_scores, ref_boxes, ref_scores, f"ONNX {backbone}+{neck}")
    ts = torch.jit.load(export_torchscript(model, str(tmp_path / "m.ts")))
    with torch.no_grad():
        ts_boxes, ts_scores = ts(images)  # traced with batch 1 too
    _assert_close(ts_boxes, ts_scores, ref_boxes, ref_scores, f"TorchScript {backbone}+{neck}")


@pytest.mark.slow
def test_torchscript_in_bfloat16_runs_its_network_in_bfloat16_and_returns_float32(tmp_path, model_of):
    """MODEL.PRECISION bfloat16 in TorchScript: bfloat16 weights, float32 outputs near the float32 model's (within
    bfloat16's 8 bits of mantissa over a few dozen layers), and not equal to them (the network did run in bfloat16)."""
    model = model_of("shufflenet", "ssd")
    images = _images(2, seed=5)
    ref_boxes, ref_scores = _reference(model, images)
    ts = torch.jit.load(export_torchscript(model, str(tmp_path / "m.ts"), dtype=torch.bfloat16))
    assert {v.dtype for k, v in ts.state_dict().items() if k.endswith("weight")} == {torch.bfloat16}
    with torch.no_grad():
        boxes, scores = ts(images)
    assert boxes.dtype == scores.dtype == torch.float32
    score_diff, box_diff = float((scores - ref_scores).abs().max()), float((boxes - ref_boxes).abs().max())
    assert 0 < score_diff < 0.05 and box_diff < 4.0, (score_diff, box_diff)


def test_onnx_in_bfloat16_is_refused_with_the_reason(tmp_path, model_of):
    with pytest.raises(ValueError, match="ONNX export in bfloat16: ONNX Runtime's CPU provider"):
        export_onnx(model_of("shufflenet", "ssd"), str(tmp_path / "m.onnx"), dtype=torch.bfloat16)
    assert not (tmp_path / "m.onnx").exists() and "TorchScript" in ONNX_FLOAT32_ONLY


@pytest.mark.slow
def test_exports_equal_pytorch_on_real_voc_images(tmp_path, model_of):
    images = _voc_images()
    model = model_of("shufflenet", "fpn")
    ref_boxes, ref_scores = _reference(model, images)
    # float input, fixed batch for ONNX; uint8 input for TorchScript
    path = export_onnx(model, str(tmp_path / "m.onnx"), dynamic_batch=False, batch_size=2, input_dtype=torch.float32)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_inputs()[0].shape == [2, 3, 320, 320]
    onnx_boxes, onnx_scores = session.run(None, {"images": images.float().numpy()})
    _assert_close(torch.from_numpy(onnx_boxes), torch.from_numpy(onnx_scores), ref_boxes, ref_scores,
                  "ONNX on VOC images")
    ts = torch.jit.load(export_torchscript(model, str(tmp_path / "m.ts")))
    with torch.no_grad():
        _assert_close(*ts(images), ref_boxes, ref_scores, "TorchScript on VOC images")


# ------------------------------------------------------------------ NMS in the graph
def _assert_same_detections(boxes, scores, classes, expected, what: str):
    """
    Every detection of `expected` (Instances) has its own counterpart in (boxes, scores, classes): same class,
    score within SCORE_ATOL, box within BOX_ATOL. Matched one to one, not by sorting: random weights give
    scores that tie within the tolerance, and sorting would then pair different boxes.
    """
    assert len(boxes) == len(expected), f"{what}: {len(boxes)} detections, inference gives {len(expected)}"
    if len(expected) == 0:
        return
    same_class = classes[:, None] == expected.pred_classes[None, :]
    close = (scores[:, None] - expected.scores[None, :]).abs() < SCORE_ATOL
    close &= (boxes[:, None, :] - expected.pred_boxes.tensor[None, :, :]).abs().amax(dim=2) < BOX_ATOL
    candidates = same_class & close  # [got, expected]
    used = torch.zeros(len(boxes), dtype=torch.bool)
    for j in range(len(expected)):
        free = (candidates[:, j] & ~used).nonzero()
        assert len(free), (
            f"{what}: no counterpart for detection {j} (class {int(expected.pred_classes[j])}, score "
            f"{float(expected.scores[j]):.6f}, box {expected.pred_boxes.tensor[j].tolist()})"
        )
        used[free[0, 0]] = True


def _nms_images() -> torch.Tensor:
    folder = os.path.join(VOC_MINI, "VOC2007", "JPEGImages")
    if os.path.isfile(os.path.join(folder, "000001.jpg")):
        return torch.cat([_images(1, seed=7), _voc_images()[:1]])
    return _images(2, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["default", "sparse"])
def test_nms_in_graph_equals_inference(selection, tmp_path, model_of):
    """default: SCORE_THRESH_TEST 0.005, the top-300 cut decides; sparse: a threshold 100 scores deep, padding."""
    model = model_of("shufflenet", "ssd")
    images = _nms_images()
    fused = prepare_for_export(model).model
    with torch.no_grad():
        logits, deltas = fused.predict(images.float() - fused.pixel_mean.view(1, 3, 1, 1))
    if selection == "sparse":
        # halfway between the 100th and 101st best logits of one image: no score sits on the threshold
        top = logits.flatten(1).topk(101).values
        i = int(top[:, -1].argmin())
        fused.test_score_thresh = float(top[i, -2:].mean().sigmoid())
    expected = fused.inference(logits, deltas)
    counts = [len(r) for r in expected]
    assert counts == [300, 300] if selection == "default" else 0 < min(counts) and max(counts) < 300, counts

    model.test_score_thresh = fused.test_score_thresh
    try:
        onnx_path = export_onnx(model, str(tmp_path / "nms.onnx"), with_nms=True)
        ts = torch.jit.load(export_torchscript(model, str(tmp_path / "nms.ts"), with_nms=True))
    finally:
        model.test_score_thresh = 0.005
    names = [o.name for o in ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_outputs()]
    assert names == list(NMS_OUTPUT_NAMES)
    with torch.no_grad():
        outputs = {"ONNX": _run_onnx(onnx_path, images), "TorchScript": ts(images)}
    for runtime, (num, boxes, scores, classes) in outputs.items():
        assert boxes.shape == (2, 300, 4) and scores.shape == (2, 300) and classes.shape == (2, 300)
        for i, result in enumerate(expected):
            n = int(num[i])
            assert (classes[i, n:] == -1).all() and (scores[i, n:] == 0).all(), "padding after the detections"
            assert (scores[i, :n].diff() <= 0).all(), "detections sorted by score"
            _assert_same_detections(boxes[i, :n], scores[i, :n], classes[i, :n], result, f"{runtime} image {i}")


# ------------------------------------------------------------------ RepVGG fusion
@pytest.mark.slow
def test_fuse_keeps_outputs_repvgg(model_of):
    model = model_of("repvgg", "fpn")
    images = _images(1, seed=11).float() - model.pixel_mean.view(1, 3, 1, 1)
    fused = prepare_for_export(model).model
    with torch.no_grad():
        before = torch.cat(model.predict(images), dim=2)
        after = torch.cat(fused.predict(images), dim=2)
    relative = float((after - before).abs().max() / before.abs().max())
    assert relative < 1e-4, f"fusion changed the outputs: max relative difference {relative:.3g}"
    assert any("rbr_1x1" in name for name, _ in model.named_modules()), "the original model is left unfused"


def _conv_kernels(path: str, scope: str):
    graph = onnx.load(path).graph
    kernels = []
    for node in graph.node:
        if node.op_type == "Conv" and scope in node.name:
            kernels += [tuple(a.ints) for a in node.attribute if a.name == "kernel_shape"]
    return kernels, [f"{node.name} {node.op_type}" for node in graph.node]


def _assert_fused_backbone(path: str):
    """RepVGG exported as deployed: every backbone conv 3x3 (no 1x1 branch), no BatchNormalization node."""
    kernels, names = _conv_kernels(path, "/backbone/")
    assert kernels and set(kernels) == {(3, 3)}, f"backbone convs of the export: {sorted(set(kernels))}"
    assert not [n for n in names if "rbr_1x1" in n or n.endswith(" BatchNormalization")]


@pytest.mark.slow
def test_fused_backbone_check_can_fail(tmp_path, model_of):
    """The same export without fusion has the 1x1 branches and the identity BatchNorms."""
    model = model_of("repvgg", "ssd", informative=False)
    path = export_onnx(model, str(tmp_path / "unfused.onnx"), dynamic_batch=False, fuse=False)
    with pytest.raises(AssertionError):
        _assert_fused_backbone(path)
    kernels, names = _conv_kernels(path, "/backbone/")
    assert (1, 1) in set(kernels) and any("rbr_1x1" in n for n in names)
    assert any(n.endswith(" BatchNormalization") for n in names)


# ------------------------------------------------------------------ every backbone x neck exports
def _combo(backbone, neck):
    marks = [pytest.mark.slow] if backbone in SLOW_BACKBONES else []
    return pytest.param(backbone, neck, marks=marks, id=f"{backbone}-{neck}")


@pytest.mark.slow
@pytest.mark.parametrize("backbone,neck", [_combo(b, n) for b in BACKBONES for n in NECKS])
def test_every_backbone_and_neck_exports_at_320(backbone, neck, tmp_path, model_of):
    model = model_of(backbone, neck, informative=False)
    num_anchors, num_classes = len(model.anchors), model.num_classes
    export_torchscript(model, str(tmp_path / "m.ts"))
    path = export_onnx(model, str(tmp_path / "m.onnx"))
    onnx.checker.check_model(path)
    graph = onnx.load(path).graph
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    assert [o.type.tensor_type.shape.dim[0].dim_param for o in graph.output] == ["batch", "batch"]
    # onnxruntime runs it (4x faster here than eager PyTorch; parity is checked above on three combinations)
    boxes, scores = _run_onnx(path, _images(1))
    assert boxes.shape == (1, num_anchors, 4) and scores.shape == (1, num_anchors, num_classes)
    assert 0 <= float(boxes.min()) and float(boxes.max()) <= 320
    assert 0 <= float(scores.min()) and float(scores.max()) <= 1
    if backbone == "repvgg":
        _assert_fused_backbone(path)
