"""Where a run computes: the device named by MODEL.DEVICE, BatchNorm across processes (precision: precision.py)."""
import logging

import torch
from torch import nn

import detectron2.utils.comm as comm

__all__ = ["check_device", "convert_sync_batchnorm"]

logger = logging.getLogger(__name__)


def check_device(device: str) -> str:
    """`device` if this machine has it (cpu, cuda, cuda:N); ValueError saying what is missing otherwise."""
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"{device!r} is not a device name (cpu, cuda, cuda:1, ...)") from e
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    elif parsed.type != "cpu":
        raise ValueError(f"device {device!r}: only cpu and cuda are supported")
    return device


def convert_sync_batchnorm(model, cfg):
    """
    With MODEL.MUTUAL_GUIDE.SYNC_BN, every BatchNorm becomes a SyncBatchNorm (statistics over all processes).
    PyTorch's SyncBatchNorm runs on GPUs only, so on a CPU run it is refused with a warning (plain BatchNorm,
    per-process statistics) rather than failing at the first iteration.
    """
    if not cfg.MODEL.MUTUAL_GUIDE.SYNC_BN or comm.get_world_size() == 1:
        return model
    if not cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning(
            "MODEL.MUTUAL_GUIDE.SYNC_BN=True is ignored on MODEL.DEVICE=%r: PyTorch's SyncBatchNorm needs CUDA; "
            "BatchNorm statistics stay per process.",
            cfg.MODEL.DEVICE,
        )
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
