"""State-dict helpers shared by the checkpointer, the backbones' ImageNet loading and the authors' key conversion.

A leaf: it imports nothing from this package, so that any layer may use it.
"""
from typing import Dict, Mapping

import torch

__all__ = ["CheckpointMismatchError", "check_state_dict_fits", "unwrap_state_dict"]

_SHOWN = 20  # mismatched tensors named in an error; the rest are counted


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model built from the config."""


def unwrap_state_dict(sd: Dict) -> Dict:
    """A saved state dict's tensors: inside {"model": ...} and/or {"state_dict": ...}, without DataParallel's prefix."""
    for wrapper in ("model", "state_dict"):
        if isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def check_state_dict_fits(own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], what: str) -> None:
    """
    Raise CheckpointMismatchError("<what>:" and one line per tensor) unless `given` has exactly the tensors of
    `own`, each of the same shape. BatchNorm's `num_batches_tracked` may be missing (torchvision files lack it).
    """
    problems = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
        for k, v in given.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems += [f"{k}: missing from the file" for k in own if k not in given and not k.endswith("num_batches_tracked")]
    problems += [f"{k}: not in the model" for k in given if k not in own]
    if problems:
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise CheckpointMismatchError(f"{what}:\n  " + "\n  ".join(problems[:_SHOWN]) + more)
