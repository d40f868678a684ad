"""The paper's anchors: six per location on every pyramid level, for an S x S input."""
import math

import torch
from torch import Tensor

__all__ = ["anchors_per_level", "generate_anchors", "generate_normalized_anchors", "num_levels_for"]

ANCHORS_PER_LOCATION = 6


def num_levels_for(size: int) -> int:
    """Pyramid levels for an S x S input: 4 below 512, 5 from 512 (strides 8 .. 64 or 8 .. 128)."""
    return 4 if size < 512 else 5


def _map_side(size: int, level: int) -> int:
    """Side of level k's map: ceil(S / 2**(3+k)), the authors' feature map sizes."""
    return math.ceil(size / 2 ** (3 + level))


def anchors_per_level(size: int, num_levels: int) -> list:
    """Number of anchors on each level, in the order of `generate_anchors`."""
    return [ANCHORS_PER_LOCATION * _map_side(size, k) ** 2 for k in range(num_levels)]


def _anchors_cxcywh(size: int, base_size: float, num_levels: int) -> Tensor:
    """Normalised (cx, cy, w, h) [A, 4] in float64, clamped to [0, 1] as the authors' `PriorBox` does."""
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


def generate_normalized_anchors(size: int, base_size: float, num_levels: int) -> Tensor:
    """
    The same anchors as `generate_anchors`, XYXY relative to the image side, computed bit for bit as the authors'
    code computes them (float32 (cx, cy, w, h), then cx - w / 2 ... in float32).

    The assignment measures anchor IoUs on these, with ground truth divided by S: IoU does not depend on the frame,
    but its last bits do, and a box often has equal IoU with two anchors of one row (both inside it along x). The
    authors' code picks among such anchors by those last bits; computing in their frame picks the same anchor.
    """
    cxcywh = _anchors_cxcywh(size, base_size, num_levels).float()
    return torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], dim=1)


def generate_anchors(size: int, base_size: float, num_levels: int) -> Tensor:
    """
    Anchors [A, 4] as XYXY pixels of the S x S input, ordered level, row, column, anchor.

    Level k has a map of side f = ceil(S / 2**(3+k)) and anchor side a = base_size * 2**k. At row i, column j
    the centre is ((j + 0.5) S / f, (i + 0.5) S / f) and the six anchors are (width x height)
        a x a,  a√2 x a/√2,  a/√2 x a√2,  then the same three with a√2 in place of a.
    As the authors' `PriorBox`, the normalised (cx, cy, w, h) are clamped to [0, 1] before anything else: only
    w and h can exceed 1, so widths and heights are capped at S while corners may still leave the image.
    """
    cxcywh = _anchors_cxcywh(size, base_size, num_levels) * size
    xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], dim=1)
    return xyxy.float()
