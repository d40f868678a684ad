"""
The anchors: six per location on every pyramid level, for an S x S input.

Two layouts, by MODEL.MUTUAL_GUIDE.NETWORK: "mg2020" (the paper's code, fd2c4cc) starts at stride 8 with 4 levels
below 512 and 5 from 512; "mg2023" (the authors' code at 108b4a8, `get_prior_box`) starts at stride 16 with 3 levels
up to 640 and 4 above. The six shapes, their order and the [0, 1] clamp are the same in both.
"""
import math

import torch
from torch import Tensor

__all__ = [
    "NETWORKS", "anchors_per_level", "first_stride", "generate_anchors", "generate_normalized_anchors",
    "num_levels_for",
]

ANCHORS_PER_LOCATION = 6
NETWORKS = ("mg2020", "mg2023")  # MODEL.MUTUAL_GUIDE.NETWORK


def _check_network(network: str) -> str:
    if network not in NETWORKS:
        raise ValueError(f"MODEL.MUTUAL_GUIDE.NETWORK must be one of {NETWORKS}, got {network!r}")
    return network


def first_stride(network: str = "mg2020") -> int:
    """Stride of pyramid level 0: 8 in the 2020 network, 16 in the 2023 one."""
    return 8 if _check_network(network) == "mg2020" else 16


def num_levels_for(size: int, network: str = "mg2020") -> int:
    """
    Pyramid levels for an S x S input. 2020: 4 below 512, 5 from 512 (strides 8 .. 64 or 8 .. 128);
    2023: 3 up to 640, 4 above (strides 16 .. 64 or 16 .. 128).
    """
    if _check_network(network) == "mg2020":
        return 4 if size < 512 else 5
    return 3 if size <= 640 else 4


def _map_side(size: int, level: int, network: str = "mg2020") -> int:
    """Side of level k's map: ceil(S / (first stride * 2**k)), the authors' feature map sizes."""
    return math.ceil(size / (first_stride(network) * 2**level))


def anchors_per_level(size: int, num_levels: int, network: str = "mg2020") -> list:
    """Number of anchors on each level, in the order of `generate_anchors`."""
    return [ANCHORS_PER_LOCATION * _map_side(size, k, network) ** 2 for k in range(num_levels)]


def _anchors_cxcywh_2023(size: int, base_size: float, num_levels: int) -> Tensor:
    """
    Normalised (cx, cy, w, h) [A, 4] in float32, computed with the operations of `get_prior_box` at 108b4a8
    (sides from float32 scale x ratio products, then x 2**k), so that the values are theirs to the last bit.
    """
    scales = torch.tensor([s * base_size / size for s in (1.0, math.sqrt(2.0))])
    h_ratios = torch.sqrt(torch.tensor([1.0, 0.5, 2.0]))
    w_ratios = 1 / h_ratios
    ws = (w_ratios[None, :] * scales[:, None]).reshape(-1)
    hs = (h_ratios[None, :] * scales[:, None]).reshape(-1)
    boxes = []
    for k in range(num_levels):
        f = _map_side(size, k, "mg2023")
        centres = (torch.arange(f) + 0.5) / f
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        cxcy = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=-1).reshape(-1, 1, 2).expand(-1, 6, 2)
        wh = (torch.stack([ws, hs], dim=1) * 2**k).reshape(1, 6, 2).expand(f * f, 6, 2)
        boxes.append(torch.cat([cxcy, wh], dim=-1).reshape(-1, 4))
    return torch.cat(boxes).clamp_(0.0, 1.0)


def _anchors_cxcywh(size: int, base_size: float, num_levels: int, network: str = "mg2020") -> Tensor:
    """Normalised (cx, cy, w, h) [A, 4] in float64, clamped to [0, 1] as the authors' `PriorBox` does."""
    if _check_network(network) == "mg2023":
        return _anchors_cxcywh_2023(size, base_size, num_levels).double()
    r = math.sqrt(2.0)
    boxes = []
    for k in range(num_levels):
        f = _map_side(size, k)
        a = base_size * 2**k / size
        b = a * r  # computed as the authors do, so the values match theirs to the last bit in float64
        sides = torch.tensor(
            [[a, a], [a * r, a / r], [a / r, a * r], [b, b], [b * r, b / r], [b / r, b * r]], dtype=torch.float64
        )
        centres = (torch.arange(f, dtype=torch.float64) + 0.5) / f
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        cxcy = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, 6, 2)
        wh = sides.reshape(1, 6, 2).expand(f * f, 6, 2)
        boxes.append(torch.cat([cxcy, wh], dim=-1).reshape(-1, 4))
    return torch.cat(boxes).clamp_(0.0, 1.0)


def generate_normalized_anchors(size: int, base_size: float, num_levels: int, network: str = "mg2020") -> Tensor:
    """
    The same anchors as `generate_anchors`, XYXY relative to the image side, computed bit for bit as the authors'
    code computes them (float32 (cx, cy, w, h), then cx - w / 2 ... in float32).

    The assignment measures anchor IoUs on these, with ground truth divided by S: IoU does not depend on the frame,
    but its last bits do, and a box often has equal IoU with two anchors of one row (both inside it along x). The
    authors' code picks among such anchors by those last bits; computing in their frame picks the same anchor.
    """
    cxcywh = _anchors_cxcywh(size, base_size, num_levels, network).float()
    return torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], dim=1)


def generate_anchors(size: int, base_size: float, num_levels: int, network: str = "mg2020") -> Tensor:
    """
    Anchors [A, 4] as XYXY pixels of the S x S input, ordered level, row, column, anchor.

    Level k has a map of side f = ceil(S / (s0 * 2**k)) (first stride s0: 8 in the 2020 network, 16 in the 2023
    one) and anchor side a = base_size * 2**k. At row i, column j
    the centre is ((j + 0.5) S / f, (i + 0.5) S / f) and the six anchors are (width x height)
        a x a,  a√2 x a/√2,  a/√2 x a√2,  then the same three with a√2 in place of a.
    As the authors' `PriorBox`, the normalised (cx, cy, w, h) are clamped to [0, 1] before anything else: only
    w and h can exceed 1, so widths and heights are capped at S while corners may still leave the image.
    """
    cxcywh = _anchors_cxcywh(size, base_size, num_levels, network) * size
    xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], dim=1)
    return xyxy.float()
