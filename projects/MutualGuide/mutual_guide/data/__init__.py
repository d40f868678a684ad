"""Data of the Mutual Guidance project: the dataset mapper, its augmentation, and dataset registration.

Importing this package registers the builtin datasets (mg_voc_*, mg_coco_*) without touching the disk.
"""
from mutual_guide.data import builtin  # noqa: F401  (registers the builtin datasets)
from mutual_guide.data.builtin import check_dataset_paths
from mutual_guide.data.custom import register_custom_datasets
from mutual_guide.data.mapper import DATASET_MAPPER_REGISTRY, MutualGuideDatasetMapper, build_dataset_mapper, build_test_transform
from mutual_guide.data.synthetic import make_synthetic_dataset

__all__ = ["DATASET_MAPPER_REGISTRY", "MutualGuideDatasetMapper", "build_dataset_mapper", "build_test_transform", "check_dataset_paths", "make_synthetic_dataset", "register_custom_datasets"]
