"""Necks: turn the backbone's stride-8 and stride-16 maps into a pyramid of equal-width maps.

`build_neck(cfg, input_shapes)` builds the one named by MODEL.NECK.NAME from NECK_REGISTRY. Every neck has
`num_levels`, `out_channels` and `forward([s8, s16]) -> [level 0 (stride 8), level 1 (stride 16), ...]`.
"""
from typing import Dict

from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

NECK_REGISTRY = Registry("NECK")
NECK_REGISTRY.__doc__ = """
Necks of the Mutual Guidance detector, registered as builder functions named after MODEL.NECK.NAME
("SSD", "FPN", "PAFPN", "RFB"), called by `build_neck` as
`builder(in_channels=[channels at stride 8, at stride 16], num_levels=4 or 5, out_channels=MODEL.NECK.OUT_CHANNELS)`
and returning a module with `num_levels`, `out_channels` and `forward([s8, s16]) -> list of num_levels maps`.
"""

__all__ = ["NECK_REGISTRY", "build_neck"]


def build_neck(cfg, input_shapes: Dict[str, ShapeSpec]) -> nn.Module:
    """
    The neck named by cfg.MODEL.NECK.NAME, fed the backbone maps of `input_shapes` ordered by stride.

    The number of levels follows the input size (`anchors.num_levels_for(cfg.INPUT.SIZE)`): 4 below 512, else 5.
    Necks use nn.BatchNorm2d; MODEL.MUTUAL_GUIDE.SYNC_BN converts them (and the backbone's) for multi-GPU runs.
    """
    from mutual_guide.modeling.anchors import num_levels_for

    shapes = sorted(input_shapes.values(), key=lambda s: s.stride)
    if [s.stride for s in shapes] != [8, 16]:
        raise ValueError(f"Necks need backbone maps of strides 8 and 16, got {[s.stride for s in shapes]}")
    builder = NECK_REGISTRY.get(cfg.MODEL.NECK.NAME)
    return builder(
        in_channels=[s.channels for s in shapes],
        num_levels=num_levels_for(cfg.INPUT.SIZE),
        out_channels=cfg.MODEL.NECK.OUT_CHANNELS,
    )


from mutual_guide.modeling.neck import fpn, pafpn, rfb, ssd  # noqa: E402,F401  (register the necks)
