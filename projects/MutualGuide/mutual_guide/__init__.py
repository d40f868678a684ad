"""Mutual Guidance detector (Zhang et al., ACCV 2020) as a Detectron2 project.

Importing the package registers everything a config names: the backbones (detectron2's BACKBONE_REGISTRY),
the necks (NECK_REGISTRY), the meta-architectures (META_ARCH_REGISTRY), the dataset mappers
(DATASET_MAPPER_REGISTRY) and the builtin datasets.

    config.py      add_mutual_guide_config: the project's config keys
    modeling/      meta-architectures, backbones, necks, head, anchors, assignment, losses, post-processing
    data/          dataset readers and checks, the mapper and its augmentation, the one resize
    evaluation/    VOC and COCO evaluators, the per-class report and its plots
    checkpoint/    state-dict helpers, the authors' key names, the checkpointer
    engine/        the Trainer, its setup and hooks, the predictor
    export/        TorchScript and ONNX
    utils/         atomic writes, events, drawing, detectron2's private names, the testing oracle
"""
from mutual_guide import data, modeling  # noqa: F401  (registration)
from mutual_guide.config import add_mutual_guide_config
from mutual_guide.modeling import NECK_REGISTRY, MutualGuideDetector, MutualGuideRetinaNet, build_neck

__all__ = ["MutualGuideDetector", "MutualGuideRetinaNet", "NECK_REGISTRY", "add_mutual_guide_config", "build_neck"]
