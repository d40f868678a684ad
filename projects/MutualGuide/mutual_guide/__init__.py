"""Mutual Guidance detector (Zhang et al., ACCV 2020) as a Detectron2 project.

Importing the package registers everything a config names: the backbones (detectron2's BACKBONE_REGISTRY),
the necks (NECK_REGISTRY), the meta-architectures (META_ARCH_REGISTRY) and the builtin datasets.
"""
from . import backbone, data, neck  # noqa: F401  (registration)
from .config import add_mutual_guide_config
from .meta_arch import MutualGuideDetector
from .retinanet import MutualGuideRetinaNet
from .neck import NECK_REGISTRY, build_neck

__all__ = ["MutualGuideDetector", "MutualGuideRetinaNet", "NECK_REGISTRY", "add_mutual_guide_config", "build_neck"]
