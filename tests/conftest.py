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


@pytest.fixture
def train_args():
    """
    train_net arguments for a small CPU run on a synthetic dataset (make_synthetic_dataset's `info`):
    train_args(info, output_dir, *opts, eval_only=False, resume=False). ResNet18-FPN at 128, batch 2, no
    augmentation, no workers, no evaluation during training; `opts` come last and override any of these.
    """
    from detectron2.engine import default_argument_parser

    def build(info, output_dir, *opts, eval_only=False, resume=False):
        name = info["custom_specs"][0].split(":")[0][: -len("_train")]
        argv = ["--config-file", os.path.join(ROOT, "configs", "demo_shapes.yaml")]
        argv += (["--eval-only"] if eval_only else []) + (["--resume"] if resume else [])
        argv += [
            "OUTPUT_DIR", str(output_dir), "DATASETS.CUSTOM", str(info["custom_specs"]),
            "DATASETS.TRAIN", f"('{name}_train',)", "DATASETS.TEST", f"('{name}_test',)",
            "MODEL.MUTUAL_GUIDE.NUM_CLASSES", "3", "INPUT.SIZE", "128", "INPUT.MG_AUGMENT", "False",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.BASE_LR", "0.02", "MODEL.BACKBONE.NAME", "ResNet18", "MODEL.NECK.NAME", "FPN",
            "TEST.EVAL_PERIOD", "0",
        ]
        return default_argument_parser().parse_args(argv + [str(o) for o in opts])

    return build


@pytest.fixture
def logged():
    """
    logged(name) -> a list that receives the messages logged by logger `name` and its children for the rest of
    the test. pytest's caplog listens at the root logger, which detectron2's setup_logger cuts off (propagate
    False on "detectron2" and, through train_net.setup, on "mutual_guide") once any test has run train_net.
    """
    import logging

    attached = []

    class _Collect(logging.Handler):
        def __init__(self, sink):
            super().__init__(logging.DEBUG)
            self.sink = sink

        def emit(self, record):
            self.sink.append(record.getMessage())

    def listen(name):
        messages = []
        logger, handler = logging.getLogger(name), _Collect(messages)
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return messages

    yield listen
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)
