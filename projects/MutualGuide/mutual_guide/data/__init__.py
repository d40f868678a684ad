"""Data of the Mutual Guidance project: the dataset mapper, its augmentation, and dataset registration.

Importing this package registers the builtin datasets (mg_voc_*, mg_coco_*) without touching the disk.
"""
from . import builtin  # noqa: F401  (registers the builtin datasets)
from .builtin import check_dataset_paths
from .custom import register_custom_datasets
from .mapper import MutualGuideDatasetMapper, build_dataset_mapper
from .synthetic import make_synthetic_dataset

__all__ = ["MutualGuideDatasetMapper", "build_dataset_mapper", "check_dataset_paths", "make_synthetic_dataset", "register_custom_datasets"]
