"""
Mixed precision on every device: which dtype the network computes in (MODEL.PRECISION, SOLVER.AMP.ENABLED),
decided once per run from what the device does fast, and the autocast that applies it in training
(`MixedPrecisionTrainer`), evaluation and the predictor.

Only the network (convolutions, matrix products) runs in the reduced dtype; the assignment, the losses and the
postprocessing turn autocast off and compute in float32 (modeling/assignment.py, losses.py, postprocessing.py).
The weights, the optimizer and the checkpoints stay float32.

    MODEL.PRECISION   CPU                                       CUDA
    "float32"         float32                                   float32 (float16 with SOLVER.AMP.ENABLED)
    "bfloat16"        bfloat16 if fast here, else float32       bfloat16 if supported, else float16 + GradScaler
    "float16"         float16 if fast here, else float32        float16 + GradScaler
    "auto"            bfloat16 if fast here, else float32       bfloat16 if supported, else float16 + GradScaler

SOLVER.AMP.ENABLED True (detectron2's switch) with MODEL.PRECISION "float32" is "float16" on CUDA, exactly
detectron2's AMPTrainer (float16 autocast, GradScaler), and "auto" on the CPU, where float16 is slow.
"Fast here" is measured on the CPU in two steps. First, once per process, oneDNN must support the dtype and a
small matrix product must run at least `MIN_SPEEDUP` times faster in it than in float32 (`cpu_capabilities`).
Then, when the caller gives the model (`precision_from_config(cfg, model, training)`: the trainer, evaluation, the
predictor), the network that will run (backbone, neck, head; no assignment, losses or postprocessing) is timed on a
dummy batch of `NETWORK_BATCH` images at the configured size, float32 against the reduced dtype under autocast:
forward and backward for training, forward under no_grad for inference (`network_times`: one thread, its CPU time,
on a copy of the model, which is left untouched). The reduced dtype is used only if it is `MIN_SPEEDUP` times faster there too; otherwise
the run says so once in the log, with both times, and stays in float32, never slower than float32. The network
measurement is done once per process for each (model, training or inference) and costs a few seconds.
"""
import contextlib
import copy
import dataclasses
import functools
import logging
import time
from typing import Optional

import torch

from detectron2.engine import AMPTrainer

__all__ = [
    "PRECISIONS",
    "Capabilities",
    "MixedPrecisionTrainer",
    "Precision",
    "check_precision",
    "cpu_capabilities",
    "device_capabilities",
    "network_times",
    "precision_from_config",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16", "float16", "auto")
# a reduced dtype must beat float32 by this much, on the startup matrix product and then on the network, to be used
# on the CPU (a clear gain: the timings of a shared machine vary by ~10%, and the reduced dtype costs accuracy)
MIN_SPEEDUP = 1.2
NETWORK_BATCH = 2  # images in the dummy batch the network is timed on
NETWORK_REPEATS = 2  # timed runs per dtype, interleaved, after one warm-up each; the best counts (CPU times vary ~5%)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_reported = set()  # fallback messages already logged in this process
_network_checks = {}  # (model class, architecture, size, training, dtype) -> (float32 seconds, reduced seconds)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a device computes fast: `fast` maps "bfloat16"/"float16" to True/False, `detail` says why."""

    device_type: str
    fast: dict
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Precision:
    """The dtype the network computes in on `device_type`; float32 means autocast off."""

    dtype: torch.dtype
    device_type: str
    grad_scaling: bool = False  # float16 needs loss scaling (GradScaler); bfloat16 has float32's range
    requested: str = "float32"

    @property
    def name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def mixed(self) -> bool:
        return self.dtype != torch.float32

    def autocast(self):
        """The context the network runs in: autocast to `dtype`, or nothing in float32."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def check_precision(value, key="MODEL.PRECISION"):
    """`value` if it names a precision; ValueError naming `key` otherwise."""
    if value not in PRECISIONS:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, PRECISIONS))}, got {value!r}")
    return value


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onednn_supports(dtype_name):
    """oneDNN's own check (private to torch, absent in some builds: then unknown, i.e. False)."""
    check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{'bf16' if dtype_name == 'bfloat16' else 'fp16'}_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def matmul_speedup(dtype, size=256, repeats=8):
    """float32 time / `dtype` time of a size x size matrix product on the CPU (best of interleaved repeats)."""
    # a generator of its own: measuring must not move the global random stream a seeded run depends on
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    low_a, low_b = a.to(dtype), b.to(dtype)
    best = {torch.float32: float("inf"), dtype: float("inf")}
    for _ in range(repeats):
        for dt, (x, y) in ((torch.float32, (a, b)), (dtype, (low_a, low_b))):
            start = time.perf_counter()
            torch.mm(x, y)
            best[dt] = min(best[dt], time.perf_counter() - start)
    return best[torch.float32] / max(best[dtype], 1e-9)


@functools.lru_cache(maxsize=None)
def cpu_capabilities() -> Capabilities:
    """
    bfloat16 / float16 count as fast on this CPU when oneDNN supports them (AVX512-BF16 or AMX) and the
    startup matrix product (a few milliseconds) is at least MIN_SPEEDUP times faster than in float32.
    """
    flags = _cpu_flags()
    fast, notes = {}, []
    for name, cpu_flags in (("bfloat16", ("avx512_bf16", "amx_bf16")), ("float16", ("avx512_fp16", "amx_fp16"))):
        present = [f for f in cpu_flags if f in flags]
        if not _onednn_supports(name):
            fast[name] = False
            notes.append(f"{name}: not supported by oneDNN on this CPU (flags {', '.join(cpu_flags)} absent)"
                         if not present else f"{name}: not supported by this PyTorch build's oneDNN")
            continue
        speedup = matmul_speedup(_DTYPES[name])
        fast[name] = speedup >= MIN_SPEEDUP
        notes.append(f"{name}: oneDNN support ({', '.join(present) or 'no CPU flag seen'}), "
                     f"matmul {speedup:.2f}x float32")
    return Capabilities("cpu", fast, "; ".join(notes))


def device_capabilities(device) -> Capabilities:
    """The Capabilities of the device `device` names (CUDA: bfloat16 if torch says so, float16 always)."""
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return Capabilities("cuda", {"bfloat16": bf16, "float16": True},
                            "bfloat16: " + ("supported" if bf16 else "not supported (needs compute capability 8.0)"))
    return cpu_capabilities()


def _report_once(message):
    if message not in _reported:
        _reported.add(message)
        logger.warning(message)


def resolve_precision(requested: str, device, amp_enabled: bool = False, capabilities: Optional[Capabilities] = None):
    """
    The Precision a run uses for MODEL.PRECISION `requested` and SOLVER.AMP.ENABLED `amp_enabled` on `device`
    (see the module's table). A fallback is logged once per process, with the reason.
    """
    check_precision(requested)
    device_type = torch.device(device).type
    if requested == "float32" and not amp_enabled:  # nothing to decide: nothing is measured
        return Precision(torch.float32, device_type, requested=requested)
    caps = capabilities if capabilities is not None else device_capabilities(device)
    device_type = caps.device_type
    wanted = requested
    if requested == "float32" and amp_enabled:
        wanted = "float16" if device_type == "cuda" else "auto"
    label = f"MODEL.PRECISION {requested!r}" + (" (SOLVER.AMP.ENABLED True)" if wanted != requested else "")
    if device_type == "cuda":
        if wanted in ("bfloat16", "auto") and caps.fast.get("bfloat16"):
            return Precision(torch.bfloat16, device_type, requested=requested)
        if wanted == "bfloat16":
            _report_once(f"{label}: this GPU has no bfloat16 ({caps.detail}); float16 autocast with loss scaling "
                         "(GradScaler) instead")
        return Precision(torch.float16, device_type, grad_scaling=True, requested=requested)
    name = "bfloat16" if wanted == "auto" else wanted
    if caps.fast.get(name):
        return Precision(_DTYPES[name], device_type, requested=requested)
    _report_once(f"{label}: {name} is not faster than float32 on this {device_type} ({caps.detail}); "
                 "running in float32")
    return Precision(torch.float32, device_type, requested=requested)


def _network_known(model):
    return hasattr(model, "predict") or all(hasattr(model, a) for a in ("backbone", "head", "head_in_features"))


def _network_outputs(model, images):
    """The network's outputs on `images`, without assignment, losses or postprocessing (`_network_known` models)."""
    if hasattr(model, "predict"):  # MutualGuideDetector: backbone -> neck -> head
        return list(model.predict(images))
    features = model.backbone(images)  # RetinaNet: backbone (with its FPN) -> head
    outputs = model.head([features[f] for f in model.head_in_features])
    return [t for level in outputs for t in level]


def network_input_size(model, cfg) -> int:
    """The side of the square images the network sees: INPUT.SIZE for MutualGuideDetector, else INPUT.MIN_SIZE_TEST
    rounded up to the backbone's size divisibility (RetinaNet)."""
    size = getattr(model, "input_size", None)
    if size:
        return int(size)
    size = int(cfg.INPUT.MIN_SIZE_TEST)
    divisibility = int(getattr(getattr(model, "backbone", None), "size_divisibility", 0) or 1)
    return -(-size // divisibility) * divisibility


def network_times(model, size, dtype, training, batch=NETWORK_BATCH, repeats=NETWORK_REPEATS):
    """
    (float32 seconds, `dtype` seconds): the best of `repeats` interleaved runs of `model`'s network on a dummy batch
    of `batch` size x size images, after one warm-up each; forward and backward if `training`, else forward under
    no_grad in eval mode. On the CPU, in one thread, by its CPU time (`time.thread_time`). Runs on a copy: `model` (weights,
    gradients, norm statistics, train flag) and the number of threads are left as they were.
    None if the network of this model is not known (no `predict`, nor backbone/head/head_in_features).
    """
    if not _network_known(model):
        return None
    net = copy.deepcopy(model).train(training)
    device = next(iter(net.parameters())).device
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def run(dt):
        grad = torch.enable_grad() if training else torch.no_grad()
        autocast = torch.autocast(device.type, dtype=dt, enabled=dt != torch.float32)
        start = clock()
        with grad:
            with autocast:
                outputs = _network_outputs(net, images)
            if training:
                sum(o.float().sum() for o in outputs).backward()
                net.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start

    # On the CPU, one thread timed by its own CPU time: what the kernels cost, whatever else the machine runs (wall
    # times on a loaded machine vary 2-3x from run to run and decide by chance); the ratio ignores how each dtype's
    # kernels scale over threads.
    threads = torch.get_num_threads()
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        run(torch.float32), run(dtype)  # warm-up: oneDNN primitives, allocator
        best = {torch.float32: float("inf"), dtype: float("inf")}
        for _ in range(repeats):
            for dt in best:
                best[dt] = min(best[dt], run(dt))
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32], best[dtype]


def check_on_network(precision: Precision, model, size, training, label="MODEL.PRECISION") -> Precision:
    """
    `precision` if its reduced dtype runs `model`'s network at least MIN_SPEEDUP times faster than float32
    (`network_times`, measured once per process for each model architecture, size and mode), else float32 with one
    warning naming `label` and both times. float32 and CUDA precisions are returned as they are, unmeasured.
    """
    if not precision.mixed or precision.device_type != "cpu":
        return precision
    model = getattr(model, "module", model)  # DistributedDataParallel's
    mode = "training" if training else "inference"
    key = (type(model).__qualname__, hash(repr(model)), int(size), bool(training), precision.dtype)
    if key not in _network_checks:
        start = time.perf_counter()
        _network_checks[key] = network_times(model, size, precision.dtype, training)
        if _network_checks[key] is not None:
            logger.info("%s: %s network measured in %.1f s", label, mode, time.perf_counter() - start)
    times = _network_checks[key]
    if times is None:
        return precision
    fp32, low = times
    what = (f"{type(model).__name__} {mode} on {NETWORK_BATCH} images of {size}x{size} took "
            f"{fp32 * 1e3:.0f} ms in float32 and {low * 1e3:.0f} ms in {precision.name}")
    if fp32 >= MIN_SPEEDUP * low:
        logger.info("%s: %s (%.2fx): %s", label, what, fp32 / max(low, 1e-9), precision.name)
        return precision
    _report_once(f"{label}: {what} ({fp32 / max(low, 1e-9):.2f}x, {MIN_SPEEDUP}x needed); running in float32")
    return Precision(torch.float32, precision.device_type, requested=precision.requested)


def precision_from_config(cfg, model=None, training=False) -> Precision:
    """
    The Precision of the run `cfg` configures (MODEL.PRECISION, SOLVER.AMP.ENABLED, MODEL.DEVICE). Given `model`,
    a reduced dtype on the CPU must also be faster on its network (`check_on_network`), for training (forward and
    backward) or inference (forward).
    """
    precision = resolve_precision(cfg.MODEL.PRECISION, cfg.MODEL.DEVICE, amp_enabled=cfg.SOLVER.AMP.ENABLED)
    if model is None or not precision.mixed:
        return precision
    label = f"MODEL.PRECISION {cfg.MODEL.PRECISION!r}" + (
        " (SOLVER.AMP.ENABLED True)" if cfg.MODEL.PRECISION == "float32" else "")
    return check_on_network(precision, model, network_input_size(getattr(model, "module", model), cfg), training, label)


class MixedPrecisionTrainer(AMPTrainer):
    """
    detectron2's AMPTrainer on any device: the forward pass under `torch.autocast(device, dtype)`, and gradient
    scaling only for float16 (bfloat16 has float32's exponent range: its GradScaler is disabled, a no-op).
    detectron2 0.7.2's AMPTrainer.run_step requires CUDA and CUDA's autocast, so the step is re-written here with
    its order (forward, zero_grad, scaled backward, metrics, scaler step and update); the rest is AMPTrainer's.
    """

    def __init__(self, model, data_loader, optimizer, precision: Precision, **kwargs):
        scaler = torch.amp.GradScaler(precision.device_type, enabled=precision.grad_scaling)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision.dtype, **kwargs)
        self.mixed_precision = precision

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with self.mixed_precision.autocast():
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        """Also resumes a checkpoint of a float32 run (no "grad_scaler" entry): the scaler starts afresh."""
        if "grad_scaler" in state_dict:
            return super().load_state_dict(state_dict)
        return super(AMPTrainer, self).load_state_dict(state_dict)
