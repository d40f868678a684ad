"""The two meta-architectures, registered in detectron2's META_ARCH_REGISTRY."""
from mutual_guide.modeling.meta_arch.detector import MutualGuideDetector
from mutual_guide.modeling.meta_arch.retinanet import MutualGuideRetinaNet

__all__ = ["MutualGuideDetector", "MutualGuideRetinaNet"]
