"""Shared test set-up: the repository root on sys.path (train_net.py, demo.py) and the real VOC images."""
import os
import sys

import pytest
from detectron2.config import get_cfg

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
