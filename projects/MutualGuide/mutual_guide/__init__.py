"""Mutual Guidance detector (Zhang et al., ACCV 2020) as a Detectron2 project."""
from .config import add_mutual_guide_config

__all__ = ["add_mutual_guide_config"]
