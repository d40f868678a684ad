"""Pieces of the training loop that differ from detectron2's defaults."""
import contextlib
import functools
import logging
import os
from unittest import mock

import torch
from torch import nn

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.engine.hooks import BestCheckpointer
from detectron2.evaluation import DatasetEvaluators

from .drawing import PredictionDrawer
from .evaluators import COCOEvaluatorWithConvention, VOCEvaluator

__all__ = [
    "BestModelCheckpointer",
    "build_dataset_evaluator",
    "check_amp_supported",
    "check_device",
    "check_num_classes",
    "convert_sync_batchnorm",
    "cpu_ddp_without_device_ids",
    "load_imagenet_backbone",
]

logger = logging.getLogger(__name__)


def build_dataset_evaluator(cfg, dataset_name, output_folder=None):
    """
    The evaluator the dataset's `evaluator_type` asks for: "pascal_voc" (detectron2's VOC metric, AP over IoU
    .50:.95, AP50, AP75, the 11-point metric for 2007 data, with the ground truth of our VOC reader) or "coco"
    (detectron2's COCOEvaluator), both writing predictions in DATASETS.BOX_CONVENTION. Each evaluation also
    leaves its per-class table, precision-recall curves and confusion matrix (at TEST.DRAW_SCORE_THRESH) in
    OUTPUT_DIR/eval/<dataset>/ (evaluation_report.py; the latest evaluation replaces the previous one's).
    With TEST.DRAW, predictions are also drawn into OUTPUT_DIR/draw/<dataset>/.
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    convention = cfg.DATASETS.BOX_CONVENTION
    report = {"report_dir": os.path.join(cfg.OUTPUT_DIR, "eval", dataset_name),
              "report_score_thresh": cfg.TEST.DRAW_SCORE_THRESH}
    if evaluator_type == "pascal_voc":
        evaluator = VOCEvaluator(dataset_name, convention, skip_bad_images=cfg.DATALOADER.SKIP_BAD_IMAGES, **report)
    elif evaluator_type == "coco":
        evaluator = COCOEvaluatorWithConvention(dataset_name, convention, tasks=("bbox",), output_dir=output_folder,
                                                **report)
    else:
        raise ValueError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; expected 'pascal_voc' or 'coco' "
            "(set it with MetadataCatalog.get(name).evaluator_type)"
        )
    if not cfg.TEST.DRAW:
        return evaluator
    drawer = PredictionDrawer(
        dataset_name, os.path.join(cfg.OUTPUT_DIR, "draw", dataset_name), cfg.TEST.DRAW_SCORE_THRESH
    )
    return DatasetEvaluators([evaluator, drawer])


def check_device(device: str) -> str:
    """`device` if this machine has it (cpu, cuda, cuda:N); ValueError saying what is missing otherwise."""
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"{device!r} is not a device name (cpu, cuda, cuda:1, ...)") from e
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    elif parsed.type != "cpu":
        raise ValueError(f"device {device!r}: only cpu and cuda are supported")
    return device


def check_amp_supported(cfg):
    """Mixed precision needs CUDA here (detectron2's AMPTrainer uses CUDA autocast): refuse it clearly."""
    if cfg.SOLVER.AMP.ENABLED and not (cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(
            f"SOLVER.AMP.ENABLED=True needs a CUDA device, but MODEL.DEVICE={cfg.MODEL.DEVICE!r} "
            f"(CUDA available: {torch.cuda.is_available()}). Set SOLVER.AMP.ENABLED False to train in float32."
        )


@contextlib.contextmanager
def cpu_ddp_without_device_ids(cfg):
    """
    For the duration of DefaultTrainer.__init__: on a multi-process CPU run (gloo), its call of detectron2's
    `create_ddp_model(model, broadcast_buffers=False)` gets `device_ids=None`. Without it create_ddp_model passes
    `device_ids=[local rank]`, which DistributedDataParallel refuses for a module on the CPU; create_ddp_model
    takes the argument, but DefaultTrainer.__init__ gives no way to pass it short of copying that method.
    """
    if torch.device(cfg.MODEL.DEVICE).type != "cpu" or comm.get_world_size() == 1:
        yield
        return
    from detectron2.engine import defaults

    with mock.patch.object(defaults, "create_ddp_model", functools.partial(defaults.create_ddp_model, device_ids=None)):
        yield


def check_num_classes(cfg, dataset_names):
    """MODEL.MUTUAL_GUIDE.NUM_CLASSES must equal the number of classes of every dataset used."""
    expected = cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != expected:
            raise ValueError(
                f"Dataset {name!r} has {len(classes)} classes but MODEL.MUTUAL_GUIDE.NUM_CLASSES={expected}; "
                f"set MODEL.MUTUAL_GUIDE.NUM_CLASSES {len(classes)}"
            )


def convert_sync_batchnorm(model, cfg):
    """
    With MODEL.MUTUAL_GUIDE.SYNC_BN, every BatchNorm becomes a SyncBatchNorm (statistics over all processes).
    PyTorch's SyncBatchNorm runs on GPUs only, so on a CPU run it is refused with a warning (plain BatchNorm,
    per-process statistics) rather than failing at the first iteration.
    """
    if not cfg.MODEL.MUTUAL_GUIDE.SYNC_BN or comm.get_world_size() == 1:
        return model
    if not cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning(
            "MODEL.MUTUAL_GUIDE.SYNC_BN=True is ignored on MODEL.DEVICE=%r: PyTorch's SyncBatchNorm needs CUDA; "
            "BatchNorm statistics stay per process.",
            cfg.MODEL.DEVICE,
        )
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def load_imagenet_backbone(backbone, cfg):
    """The paper's initialisation: ImageNet weights into the backbone, as MODEL.BACKBONE.PRETRAINED says."""
    from .backbone import load_pretrained_backbone

    spec = cfg.MODEL.BACKBONE.PRETRAINED
    load_pretrained_backbone(backbone, cfg.MODEL.BACKBONE.NAME, spec)
    logger.info("Backbone %s initialised from %s", cfg.MODEL.BACKBONE.NAME, spec)


class BestModelCheckpointer(BestCheckpointer):
    """
    detectron2's BestCheckpointer (OUTPUT_DIR/<file_prefix>.pth holds the weights of the best evaluation so far),
    which, when the metric it tracks is not among the evaluation's results, also names the ones that are:
    detectron2's only says that it was not found, and a misspelt TEST.BEST_METRIC would go unnoticed.
    """

    def _best_checking(self):
        latest = self.trainer.storage.latest()
        if self._val_metric not in latest:
            # evaluation results are stored flattened as "<task>/<metric>"; training scalars have no "/"
            available = sorted(k for k in latest if "/" in k) or sorted(latest)
            self._logger.warning(
                "TEST.BEST_METRIC %r is not among the evaluation results, so no model_best.pth is kept. "
                "Metrics that exist: %s",
                self._val_metric,
                ", ".join(available),
            )
            return
        super()._best_checking()
