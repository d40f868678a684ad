"""MODEL.PRECISION: the precision each device gets, the fallback said once, float32 where it must stay, a bfloat16
training step and predictor."""
import logging
import uuid

import numpy as np
import pytest
import torch

from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mutual_guide.engine import precision as precision_module
from mutual_guide.engine.precision import Capabilities, MixedPrecisionTrainer, resolve_precision
from mutual_guide.engine.predictor import MutualGuidePredictor
from mutual_guide.engine.preflight import check_config

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
CPU_FAST_BF16 = Capabilities("cpu", {"bfloat16": True, "float16": False}, "fake: bf16 fast")
CPU_SLOW = Capabilities("cpu", {"bfloat16": False, "float16": False}, "fake: nothing fast")
CUDA_BF16 = Capabilities("cuda", {"bfloat16": True, "float16": True})
CUDA_NO_BF16 = Capabilities("cuda", {"bfloat16": False, "float16": True}, "fake: compute capability 7.5")


def test_a_bad_precision_is_refused_naming_the_key(make_cfg):
    with pytest.raises(ValueError, match=r"MODEL.PRECISION must be one of .*'bfloat16'.*got 'half'"):
        check_config(make_cfg(opts=["MODEL.PRECISION", "half"]), training=False)


@pytest.mark.parametrize(
    "requested, amp, caps, dtype, scaling",
    [
        ("float32", False, CPU_FAST_BF16, FP32, False),
        ("bfloat16", False, CPU_FAST_BF16, BF16, False),
        ("auto", False, CPU_FAST_BF16, BF16, False),
        ("float16", False, CPU_FAST_BF16, FP32, False),  # float16 not fast on this CPU: float32, not slower
        ("bfloat16", False, CPU_SLOW, FP32, False),
        ("auto", False, CPU_SLOW, FP32, False),
        ("float32", True, CPU_FAST_BF16, BF16, False),  # SOLVER.AMP.ENABLED on the CPU: "auto"
        ("float32", True, CPU_SLOW, FP32, False),
        ("float32", True, CUDA_BF16, FP16, True),  # detectron2's AMPTrainer: float16 + GradScaler
        ("bfloat16", True, CUDA_BF16, BF16, False),  # MODEL.PRECISION, when not float32, decides
        ("auto", False, CUDA_BF16, BF16, False),
        ("bfloat16", False, CUDA_NO_BF16, FP16, True),
        ("auto", False, CUDA_NO_BF16, FP16, True),
        ("float16", False, CUDA_BF16, FP16, True),
    ],
)
def test_the_precision_each_device_gets(requested, amp, caps, dtype, scaling):
    got = resolve_precision(requested, caps.device_type, amp_enabled=amp, capabilities=caps)
    assert (got.dtype, got.grad_scaling, got.device_type) == (dtype, scaling, caps.device_type)
    assert isinstance(got.autocast(), torch.autocast) == (dtype != FP32)


def test_a_fallback_is_said_once(caplog, monkeypatch):
    monkeypatch.setattr(precision_module, "_reported", set())
    with caplog.at_level(logging.WARNING, logger=precision_module.__name__):
        for _ in range(3):
            resolve_precision("bfloat16", "cpu", capabilities=CPU_SLOW)
        resolve_precision("bfloat16", "cpu", capabilities=CPU_FAST_BF16)  # no fallback, nothing said
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "MODEL.PRECISION 'bfloat16'" in messages[0] and "running in float32" in messages[0]
    assert "fake: nothing fast" in messages[0]


@pytest.mark.parametrize(
    "flags, onednn, speedup, fast",
    [
        ({"avx512_bf16"}, {"bfloat16": True, "float16": False}, 2.2, {"bfloat16": True, "float16": False}),
        ({"avx512_bf16"}, {"bfloat16": True, "float16": False}, 1.05, {"bfloat16": False, "float16": False}),
        ({"amx_bf16", "amx_fp16"}, {"bfloat16": True, "float16": True}, 3.0, {"bfloat16": True, "float16": True}),
        (set(), {"bfloat16": False, "float16": False}, 9.9, {"bfloat16": False, "float16": False}),
    ],
)
def test_cpu_detection_needs_support_and_a_measured_speedup(monkeypatch, flags, onednn, speedup, fast):
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(precision_module, "_onednn_supports", lambda name: onednn[name])
    monkeypatch.setattr(precision_module, "matmul_speedup", lambda dtype: speedup)
    caps = precision_module.cpu_capabilities.__wrapped__()
    assert caps.fast == fast


def fake_times(fp32, low, calls=None):
    """A stand-in for precision.network_times: fixed (float32, reduced) seconds; records its calls."""

    def times(model, size, dtype, training):
        if calls is not None:
            calls.append((type(model).__name__, size, dtype, training))
        return fp32, low

    return times


@pytest.fixture
def fresh_checks(monkeypatch):
    """No network measured nor fallback said yet in this process; bfloat16 passes the device's check."""
    monkeypatch.setattr(precision_module, "_network_checks", {})
    monkeypatch.setattr(precision_module, "_reported", set())
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: CPU_FAST_BF16)


@pytest.mark.parametrize("requested, amp", [("bfloat16", False), ("auto", False), ("float32", True)])
def test_a_reduced_dtype_slower_on_the_network_falls_back_to_float32_saying_so_once(
        make_cfg, monkeypatch, caplog, fresh_checks, requested, amp):
    calls = []
    monkeypatch.setattr(precision_module, "network_times", fake_times(0.100, 0.125, calls))
    cfg, model = _tiny_model(make_cfg, **{"MODEL.PRECISION": requested, "SOLVER.AMP.ENABLED": str(amp)})
    with caplog.at_level(logging.WARNING, logger=precision_module.__name__):
        got = [precision_module.precision_from_config(cfg, model, training=True) for _ in range(3)]
    assert all(p.dtype == FP32 for p in got)
    assert calls == [("MutualGuideDetector", 64, BF16, True)]  # measured once per process
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert f"MODEL.PRECISION {requested!r}" in messages[0] and ("SOLVER.AMP.ENABLED" in messages[0]) == amp
    assert "100 ms in float32" in messages[0] and "125 ms in bfloat16" in messages[0]
    assert "running in float32" in messages[0]


def test_a_reduced_dtype_faster_on_the_network_is_used(make_cfg, monkeypatch, caplog, fresh_checks):
    calls = []
    monkeypatch.setattr(precision_module, "network_times", fake_times(0.30, 0.20, calls))  # 1.5x >= MIN_SPEEDUP
    cfg, model = _tiny_model(make_cfg, **{"MODEL.PRECISION": "auto"})
    with caplog.at_level(logging.WARNING, logger=precision_module.__name__):
        assert precision_module.precision_from_config(cfg, model, training=True).dtype == BF16
        assert precision_module.precision_from_config(cfg, model, training=False).dtype == BF16
    assert [c[3] for c in calls] == [True, False]  # training and inference measured apart
    assert not caplog.records
    # just below the threshold: float32
    monkeypatch.setattr(precision_module, "_network_checks", {})
    monkeypatch.setattr(precision_module, "network_times", fake_times(0.119, 0.100))
    assert precision_module.precision_from_config(cfg, model, training=True).dtype == FP32


@pytest.mark.parametrize("requested, caps", [("float32", CPU_FAST_BF16), ("auto", CPU_SLOW), ("bfloat16", CUDA_BF16)])
def test_nothing_is_measured_when_no_reduced_dtype_would_run_on_the_cpu(make_cfg, monkeypatch, requested, caps):
    def never(*args, **kwargs):
        raise AssertionError("network measured")

    monkeypatch.setattr(precision_module, "_network_checks", {})
    monkeypatch.setattr(precision_module, "network_times", never)
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: caps)
    monkeypatch.setattr(precision_module, "device_capabilities", lambda device: caps)
    cfg, model = _tiny_model(make_cfg, **{"MODEL.PRECISION": requested})
    got = precision_module.precision_from_config(cfg, model, training=True)
    assert got.dtype == {"float32": FP32, "auto": FP32, "bfloat16": BF16}[requested]


@pytest.mark.parametrize("training", [True, False])
def test_a_real_network_measurement_leaves_the_model_as_it_was(make_cfg, training):
    _, model = _tiny_model(make_cfg)
    model.train(not training)  # the measurement's mode differs from the model's
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    times = precision_module.network_times(model, 64, BF16, training, repeats=1)
    assert len(times) == 2 and all(0 < t < 10 for t in times)
    assert torch.get_num_threads() == threads
    assert model.training == (not training)
    assert all(p.grad is None for p in model.parameters())
    state = model.state_dict()
    assert state.keys() == buffers.keys()
    assert all(torch.equal(state[k], v) for k, v in buffers.items())  # weights, BN running stats and counts


def _tiny_model(make_cfg, **opts):
    cfg = make_cfg(size=64, num_classes=3, opts=[x for kv in opts.items() for x in kv])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(n):
        inst = Instances((size, size))
        xy = torch.rand(3, 2, generator=g) * size * 0.6
        inst.gt_boxes = Boxes(torch.cat([xy, xy + 8 + torch.rand(3, 2, generator=g) * size * 0.3], 1))
        inst.gt_classes = torch.tensor([0, 1, 2])
        batch.append({"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
                      "instances": inst})
    return batch


def test_assignment_and_losses_stay_float32_under_bfloat16_autocast(make_cfg):
    """
    Under autocast the network's outputs are bfloat16; the labels and losses computed from them under autocast
    equal those computed in plain float32 from the same values (in bfloat16 the losses would differ by ~1e-3).
    """
    _, model = _tiny_model(make_cfg)
    model.train()
    images = model.preprocess_image(_batch()).tensor
    gt = model._ground_truth([x["instances"] for x in _batch()])
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        logits, deltas = model.predict(images)
        _, labels = model.label_anchors(logits, deltas, gt)
        losses = model.losses(logits, deltas, gt)
    assert logits.dtype == BF16 and deltas.dtype == BF16  # autocast was on for the network
    with torch.no_grad():
        _, labels32 = model.label_anchors(logits.float(), deltas.float(), gt)
        losses32 = model.losses(logits.float(), deltas.float(), gt)
    assert torch.equal(labels.cls_labels, labels32.cls_labels) and torch.equal(labels.reg_mask, labels32.reg_mask)
    for name, value in losses.items():
        assert value.dtype == FP32, name
        assert value.item() == pytest.approx(losses32[name].item(), rel=1e-6), name


def test_a_bfloat16_training_step_runs_with_finite_loss_and_float32_weights(make_cfg):
    _, model = _tiny_model(make_cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    precision = resolve_precision("bfloat16", "cpu", capabilities=CPU_FAST_BF16)
    step = MixedPrecisionTrainer(model, [_batch()] * 2, optimizer, precision)
    assert not step.grad_scaler.is_enabled()  # bfloat16: no loss scaling
    outputs = []
    model.head.register_forward_hook(lambda m, i, o: outputs.append(o[0][0].dtype))
    before = [p.detach().clone() for p in model.parameters()]
    with EventStorage(0) as storage:
        step.iter = 0
        step.run_step()
        loss = storage.history("total_loss").latest()
    assert outputs == [BF16]
    assert np.isfinite(loss) and loss > 0
    assert all(p.dtype == FP32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # a float32 run's checkpoint (no "grad_scaler") resumes into a mixed-precision run
    step.load_state_dict({"iteration": 0, "optimizer": optimizer.state_dict()})


def test_the_predictor_in_bfloat16_returns_float32_boxes(make_cfg, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: CPU_FAST_BF16)
    monkeypatch.setattr(precision_module, "network_times", fake_times(0.2, 0.1))
    cfg, model = _tiny_model(make_cfg, **{"MODEL.PRECISION": "bfloat16", "MODEL.MUTUAL_GUIDE.SCORE_THRESH_TEST": "0.0"})
    predictor = MutualGuidePredictor(cfg, model=model.fuse_for_inference())
    seen = []
    predictor.model.head.register_forward_hook(lambda m, i, o: seen.append(o[0][0].dtype))
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    instances = predictor(image)
    assert predictor.precision.dtype == BF16 and seen == [BF16]
    assert len(instances) > 0
    assert instances.pred_boxes.tensor.dtype == FP32 and instances.scores.dtype == FP32
    assert instances.pred_boxes.tensor[:, 2].max() <= 80 and instances.pred_boxes.tensor[:, 3].max() <= 50


@pytest.mark.slow
@pytest.mark.parametrize("caps, amp, step_type, dtype", [
    (CPU_FAST_BF16, "True", MixedPrecisionTrainer, BF16),  # SOLVER.AMP.ENABLED on the CPU: bfloat16 here
    (CPU_SLOW, "True", SimpleTrainer, FP32),  # not detectron2's CUDA-only AMPTrainer, which would fail at its step
    (CPU_SLOW, "False", SimpleTrainer, FP32),
])
def test_the_trainer_steps_in_the_precision_it_resolved(tmp_path, monkeypatch, make_cfg, caps, amp, step_type, dtype):
    from train_net import Trainer

    from mutual_guide.data import make_synthetic_dataset, register_custom_datasets

    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: caps)
    monkeypatch.setattr(precision_module, "_network_checks", {})
    monkeypatch.setattr(precision_module, "network_times", fake_times(0.2, 0.1))
    name = f"amp_{uuid.uuid4().hex[:8]}"
    data = make_synthetic_dataset(str(tmp_path / "data"), "coco", num_train=4, num_test=1, image_size=64, name=name)
    cfg = make_cfg(size=64, num_classes=3, opts=[
        "DATASETS.CUSTOM", str(data["custom_specs"]), "DATASETS.TRAIN", f"('{name}_train',)", "DATASETS.TEST", "()",
        "SOLVER.AMP.ENABLED", amp, "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    register_custom_datasets(cfg)
    (tmp_path / "out").mkdir()  # train_net.setup makes it
    trainer = Trainer(cfg)
    assert type(trainer._trainer) is step_type and trainer.precision.dtype == dtype


def test_deciding_leaves_the_global_random_stream_alone():
    """A seeded run draws the same numbers whatever was measured before (the startup check has its own generator,
    and float32 measures nothing)."""
    from mutual_guide.engine import precision

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    precision.resolve_precision("float32", "cpu")
    precision.matmul_speedup(torch.bfloat16, size=16, repeats=1)
    assert torch.equal(torch.rand(3), expected)
