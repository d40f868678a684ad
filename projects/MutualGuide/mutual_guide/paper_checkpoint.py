"""Key renaming between the authors' detector state dicts and this project's.

The authors' `Detector` has top-level `backbone.*`, `neck.*`, `loc.<k>.*` and `conf.<k>.*`; ours keeps the
backbone and neck names and moves the two conv lists into `head`. Backbone and neck parameter names are
identical by construction, so only the head prefixes change.
"""
from typing import Dict

__all__ = ["convert_paper_state_dict", "to_paper_state_dict"]

_HEAD_PREFIXES = ("loc.", "conf.")


def convert_paper_state_dict(sd: Dict) -> Dict:
    """
    The authors' state dict in our names: unwraps {"model": ...} / {"state_dict": ...}, strips DataParallel's
    leading `module.`, drops their distillation tensors (keys containing "dist"), renames `loc.*` -> `head.loc.*` and `conf.*` -> `head.conf.*`. Our own keys come back
    unchanged, so converting twice is converting once.
    """
    for wrapper in ("model", "state_dict"):
        if set(sd.keys()) == {wrapper} and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    out = {}
    for key, value in sd.items():
        if "dist" in key:
            # the authors' distillation-time tensors, which their own test script drops before loading
            continue
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(_HEAD_PREFIXES):
            key = "head." + key
        out[key] = value
    return out


def to_paper_state_dict(sd: Dict) -> Dict:
    """Inverse of `convert_paper_state_dict` on our keys: `head.loc.*` -> `loc.*`, `head.conf.*` -> `conf.*`."""
    out = {}
    for key, value in sd.items():
        if key.startswith(tuple("head." + p for p in _HEAD_PREFIXES)):
            key = key[len("head."):]
        out[key] = value
    return out
