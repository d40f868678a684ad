"""The detectors: importing this registers the backbones, the necks and the meta-architectures."""
from mutual_guide.modeling import backbone  # noqa: F401  (registers the backbones)
from mutual_guide.modeling.meta_arch import MutualGuideDetector, MutualGuideRetinaNet
from mutual_guide.modeling.neck import NECK_REGISTRY, build_neck

__all__ = ["MutualGuideDetector", "MutualGuideRetinaNet", "NECK_REGISTRY", "build_neck"]
