"""
Shared test set-up: the repository root on sys.path (train_net.py, demo.py), the real VOC images, a CPU config,
and random assignment inputs for the vectorised-against-oracle tests.
"""
import os
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling.box_regression import Box2BoxTransform

from mutual_guide.config import add_mutual_guide_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Two real VOC 2007 images with annotations, beside the repository (never copied into it).
VOC_MINI = os.environ.get("MG_VOC_MINI", os.path.join(ROOT, "..", "shared", "data", "voc_mini"))


@pytest.fixture
def voc_mini_root():
    root = os.path.join(VOC_MINI, "VOC2007")
    if not os.path.isdir(root):
        pytest.skip(f"real VOC images not found at {root}")
    return root


def make_cfg(backbone="ShuffleNetV2", neck="FPN", size=320, num_classes=80):
    """A CPU config of the given network, every other key at the project's default."""
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.NECK.NAME = neck
    cfg.INPUT.SIZE = size
    cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = num_classes
    return cfg


# ----------------------------------------------------------------------------- random assignment inputs
RANDOM_BATCH_CLASSES = 6  # classes of `random_batch`; the background label is 6


def _random_boxes(n, k, size, g, integer=False):
    xy = torch.rand(n, k, 2, generator=g) * size * 0.8
    wh = torch.rand(n, k, 2, generator=g) * size * 0.5 + 2
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], -1)
    return boxes.round() if integer else boxes


def _small_anchors(size=64):
    """Six anchors per cell at strides 8, 16, 32 of a 64 x 64 image (336 anchors)."""
    anchors = []
    for stride in (8, 16, 32):
        for y in range(0, size, stride):
            for x in range(0, size, stride):
                for s in (1.5, 3.0):
                    for ar in (0.5, 1.0, 2.0):
                        w, h = stride * s * ar**0.5, stride * s / ar**0.5
                        cx, cy = x + stride / 2, y + stride / 2
                        anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(anchors)


def _random_batch(seed, max_boxes, integer=False, duplicates=False):
    """
    4 images of a 64 x 64 frame: anchors [A, 4], per-image boxes and classes (image 0 has `max_boxes`, the last
    none), predicted boxes [4, A, 4] and logits [4, A, 6]. `integer` rounds every box (ties between anchors);
    `duplicates` repeats two boxes per image (ties between boxes).
    """
    g = torch.Generator().manual_seed(seed)
    anchors = _small_anchors()
    n, a = 4, len(anchors)
    counts = torch.randint(0, max_boxes + 1, (n,), generator=g).tolist()
    counts[0] = max_boxes  # G = max_boxes
    if max_boxes > 0:
        counts[-1] = 0  # always one empty image
    boxes = [_random_boxes(1, k, 64, g, integer)[0] for k in counts]
    if duplicates:
        boxes = [torch.cat([b, b[:2]]) if len(b) else b for b in boxes]
    classes = [torch.randint(0, RANDOM_BATCH_CLASSES, (len(b),), generator=g) for b in boxes]
    deltas = torch.randn(n, a, 4, generator=g) * 0.7
    pred = Box2BoxTransform((10.0, 10.0, 5.0, 5.0)).apply_deltas(deltas.view(-1, 4), anchors.repeat(n, 1))
    pred = pred.view(n, a, 4)
    if integer:
        pred = pred.round()
        pred[..., 2:] = torch.maximum(pred[..., 2:], pred[..., :2] + 1)
    logits = torch.randn(n, a, RANDOM_BATCH_CLASSES, generator=g) * 2
    return anchors, boxes, classes, pred, logits


@pytest.fixture
def random_batch():
    """`_random_batch(seed, max_boxes, integer=False, duplicates=False)`: random assignment inputs."""
    return _random_batch


@pytest.fixture
def random_boxes():
    """`_random_boxes(n, k, size, generator, integer=False)`: [n, k, 4] XYXY boxes inside a size x size frame."""
    return _random_boxes
