"""Key renaming between the authors' detector state dicts and this project's.

The authors' `Detector` has top-level `backbone.*`, `neck.*`, `loc.<k>.*` and `conf.<k>.*`; ours keeps the
backbone and neck names and moves the two conv lists into `head`. Backbone and neck parameter names are
identical by construction, so only the head prefixes change. The same holds for their 2023 network (code at
108b4a8), whose files add two things dropped here: the distillation branch `dist.*`, and in RepVGG-A0 files the
stale branches of the blocks their code switched to deploy form when building (`rbr_reparam` beside
`rbr_dense` / `rbr_1x1` / `rbr_identity` of one block: the fused conv is what ran and trained).

The conversion runs in one place: `rename_paper_keys`, a load_state_dict pre-hook that MutualGuideDetector
registers on itself. detectron2 converts its own legacy formats in its checkpointer's `_load_file`, but a
checkpointer is only one of the ways a state dict reaches a model: detectron2's plain DetectionCheckpointer,
DefaultPredictor and a bare `model.load_state_dict` never see our checkpointer. A model-level hook covers them
all; MutualGuideCheckpointer sees the converted names by checking from a hook that runs after this one.
"""
from typing import Dict

from mutual_guide.checkpoint.state_dict import unwrap_state_dict

__all__ = ["convert_paper_state_dict", "rename_paper_keys", "to_paper_state_dict"]

_HEAD_PREFIXES = ("loc.", "conf.")


def convert_paper_state_dict(sd: Dict) -> Dict:
    """
    The authors' state dict in our names: unwraps {"model": ...} / {"state_dict": ...}, strips DataParallel's
    leading `module.`, drops their distillation tensors (keys containing "dist") and the training branches of
    RepVGG blocks that also have `rbr_reparam`, renames `loc.*` -> `head.loc.*` and `conf.*` -> `head.conf.*`.
    Our own keys come back unchanged, so converting twice is converting once.
    """
    out = {}
    sd = unwrap_state_dict(sd)
    fused = {k[: -len(".rbr_reparam.weight")] for k in sd if k.endswith(".rbr_reparam.weight")}
    for key, value in sd.items():
        if "dist" in key:
            # the authors' distillation-time tensors, which their own test script drops before loading
            continue
        block, _, rest = key.partition(".rbr_")
        if rest and block in fused and not rest.startswith("reparam."):
            continue  # a RepVGG block's unused training branches beside its deploy-form conv
        if key.startswith(_HEAD_PREFIXES):
            key = "head." + key
        out[key] = value
    return out


def rename_paper_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """load_state_dict pre-hook of the detector: `convert_paper_state_dict` on the keys under `prefix`, in place."""
    ours = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    converted = convert_paper_state_dict(ours)
    if converted.keys() != ours.keys():
        for k in ours:
            del state_dict[prefix + k]
        for k, v in converted.items():
            state_dict[prefix + k] = v


def to_paper_state_dict(sd: Dict) -> Dict:
    """Inverse of `convert_paper_state_dict` on our keys: `head.loc.*` -> `loc.*`, `head.conf.*` -> `conf.*`."""
    out = {}
    for key, value in sd.items():
        if key.startswith(tuple("head." + p for p in _HEAD_PREFIXES)):
            key = key[len("head."):]
        out[key] = value
    return out
