"""Necks: turn the backbone's two maps (strides 8 and 16; 16 and 32 in the 2023 network) into a pyramid of
equal-width maps.

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
The 2023 network's necks ("SSD2023", "FPN2023", "PAFPN2023") take the maps at strides 16 and 32, 3 or 4 levels,
and `conv_block=MODEL.NECK.CONV_BLOCK` besides.
"""

# the necks of MODEL.MUTUAL_GUIDE.NETWORK "mg2023"; the others are the 2020 network's
NECKS_2023 = ("SSD2023", "FPN2023", "PAFPN2023")

__all__ = ["NECKS_2023", "NECK_REGISTRY", "build_neck"]


def build_neck(cfg, input_shapes: Dict[str, ShapeSpec]) -> nn.Module:
    """
    The neck named by cfg.MODEL.NECK.NAME, fed the backbone maps of `input_shapes` ordered by stride.

    The number of levels follows the input size (`anchors.num_levels_for(cfg.INPUT.SIZE, network)`): 4 below 512,
    else 5 (2023 network: 3 up to 640, else 4). The neck must belong to MODEL.MUTUAL_GUIDE.NETWORK.
    Necks use nn.BatchNorm2d; MODEL.MUTUAL_GUIDE.SYNC_BN converts them (and the backbone's) for multi-GPU runs.
    """
    from mutual_guide.modeling.anchors import first_stride, num_levels_for

    network = cfg.MODEL.MUTUAL_GUIDE.NETWORK
    name = cfg.MODEL.NECK.NAME
    strides = [first_stride(network), 2 * first_stride(network)]
    if (name in NECKS_2023) != (network == "mg2023"):
        raise ValueError(
            f"MODEL.NECK.NAME {name!r} is not a neck of MODEL.MUTUAL_GUIDE.NETWORK {network!r} "
            f"(the 2023 network's necks are {NECKS_2023}, the 2020 one's the others)"
        )
    shapes = sorted(input_shapes.values(), key=lambda s: s.stride)
    if [s.stride for s in shapes] != strides:
        raise ValueError(
            f"The {network} network's necks need backbone maps of strides {strides}, got "
            f"{[s.stride for s in shapes]} (MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r})"
        )
    builder = NECK_REGISTRY.get(name)
    kwargs = {"conv_block": cfg.MODEL.NECK.CONV_BLOCK} if network == "mg2023" else {}
    return builder(
        in_channels=[s.channels for s in shapes],
        num_levels=num_levels_for(cfg.INPUT.SIZE, network),
        out_channels=cfg.MODEL.NECK.OUT_CHANNELS,
        **kwargs,
    )


from mutual_guide.modeling.neck import fpn, net2023, pafpn, rfb, ssd  # noqa: E402,F401  (register the necks)
