"""Evaluation: detectron2's VOC and COCO metrics in the configured box convention, and the per-class report."""
from mutual_guide.evaluation.build import build_dataset_evaluator
from mutual_guide.evaluation.evaluators import COCOEvaluatorWithConvention, VOCEvaluator

__all__ = ["COCOEvaluatorWithConvention", "VOCEvaluator", "build_dataset_evaluator"]
