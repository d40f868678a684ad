"""Anchors: the authors' PriorBox layout, as XYXY pixels."""
import math
from itertools import product

import pytest
import torch

from mutual_guide.modeling.anchors import anchors_per_level, generate_anchors, num_levels_for

R2 = math.sqrt(2.0)


def plain_loop_anchors(size, base, num_levels):
    """The authors' PriorBox written as plain loops: normalised (cx, cy, w, h) clamped to [0, 1], then XYXY."""
    out = []
    for k in range(num_levels):
        f = math.ceil(size / 2 ** (3 + k))
        for i, j in product(range(f), range(f)):
            cx, cy = (j + 0.5) / f, (i + 0.5) / f
            a = base * 2**k / size
            for side in (a, a * R2):
                for w, h in ((side, side), (side * R2, side / R2), (side / R2, side * R2)):
                    cx_, cy_, w_, h_ = (min(max(v, 0.0), 1.0) for v in (cx, cy, w, h))
                    out.append([(cx_ - w_ / 2) * size, (cy_ - h_ / 2) * size, (cx_ + w_ / 2) * size, (cy_ + h_ / 2) * size])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("size,levels", [(64, 4), (320, 4), (448, 4), (512, 5), (640, 5)])
def test_num_levels(size, levels):
    assert num_levels_for(size) == levels


@pytest.mark.parametrize("size,count", [(64, 6 * (64 + 16 + 4 + 1)), (320, 12750), (512, 32736)])
def test_count(size, count):
    assert generate_anchors(size, 24.0, num_levels_for(size)).shape == (count, 4)


def test_small_case_by_hand():
    # S = 64, base 24: map sides 8, 4, 2, 1; anchor sides 24, 48, 96, 192 pixels
    anchors = generate_anchors(64, 24.0, 4)
    assert anchors.dtype == torch.float32
    h = 24 * R2 / 2  # half of a*sqrt2
    expected_first = [
        [-8.0, -8.0, 16.0, 16.0],  # 24 x 24 around (4, 4)
        [4 - h, 4 - h / 2, 4 + h, 4 + h / 2],  # 33.94 wide x 16.97 tall
        [4 - h / 2, 4 - h, 4 + h / 2, 4 + h],
        [4 - h, 4 - h, 4 + h, 4 + h],  # (24 sqrt2) squared
        [-20.0, -8.0, 28.0, 16.0],  # 48 x 24
        [-8.0, -20.0, 16.0, 28.0],  # 24 x 48
    ]
    torch.testing.assert_close(anchors[:6], torch.tensor(expected_first), rtol=0, atol=1e-5)
    # row-major: level 0, row 1, column 0 is location 8, centred at (4, 12)
    torch.testing.assert_close(anchors[48], torch.tensor([-8.0, 0.0, 16.0, 24.0]))
    # level 2 (2 x 2 map), first location: 96 pixels clamped to 64 in width and height, the centre stays at
    # (16, 16), so the box leaves the image: the clamp is on w/h, not on the corners
    first_level2 = 6 * (64 + 16)
    torch.testing.assert_close(anchors[first_level2], torch.tensor([-16.0, -16.0, 48.0, 48.0]))
    # level 3 (one location at (32, 32)): every anchor is larger than the image, all become the whole image
    torch.testing.assert_close(anchors[-6:], torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 6))


@pytest.mark.slow
@pytest.mark.parametrize("size,base", [(320, 24.0), (512, 24.0), (384, 32.0)])
def test_matches_plain_loop_oracle(size, base):
    ours = generate_anchors(size, base, num_levels_for(size)).double()
    oracle = plain_loop_anchors(size, base, num_levels_for(size))
    assert ours.shape == oracle.shape
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-4)


def test_normalized_anchors_are_the_pixel_anchors_over_the_side():
    from mutual_guide.modeling.anchors import generate_normalized_anchors

    pixel = generate_anchors(320, 24.0, 4)
    normalized = generate_normalized_anchors(320, 24.0, 4)
    assert normalized.dtype == torch.float32
    assert torch.allclose(normalized * 320, pixel, atol=1e-4)


def test_ties_between_anchors_break_as_in_the_authors_frame():
    """
    A flat box (120 x 11 px) contains anchors 4114 and 4162 of one row along x, so its IoU with both is the same
    real number: measured in pixels the two floats are equal and argmax takes 4114, measured relative to the image
    side (the authors' code) 4162 is larger in the last bit, and their baseline forces 4162. The box's best IoU is
    0.274, so the forced anchor is its only positive.
    """
    from detectron2.structures import Boxes, pairwise_iou

    from mutual_guide.modeling.anchors import generate_normalized_anchors
    from mutual_guide.modeling.assignment import BestAnchorIoUMatcher

    box = torch.tensor([[13.758645057678223, 135.7713623046875, 133.61485290527344, 146.92062377929688]])
    pixel_iou = pairwise_iou(Boxes(box), Boxes(generate_anchors(320, 24.0, 4)))[0]
    assert pixel_iou[4114] == pixel_iou[4162] == pixel_iou.max()

    labels = BestAnchorIoUMatcher((0.4, 0.5), 1)(
        generate_normalized_anchors(320, 24.0, 4), box[None] / 320, torch.zeros(1, 1, dtype=torch.long),
        torch.ones(1, 1, dtype=torch.bool),
    )
    assert labels.reg_mask[0].nonzero().flatten().tolist() == [4162]


@pytest.mark.parametrize("size,expected", [(320, [9600, 2400, 600, 150]), (512, [24576, 6144, 1536, 384, 96])])
def test_anchors_per_level_split_the_anchor_list(size, expected):
    # 6 anchors per cell of maps 40, 20, 10, 5 (320) and 64, 32, 16, 8, 4 (512)
    levels = num_levels_for(size)
    assert anchors_per_level(size, levels) == expected
    assert sum(expected) == len(generate_anchors(size, 24.0, levels))
