"""Evaluation: detectron2's VOC and COCO metrics in the configured box convention, the per-class report, and the
per-image records with the alignment report (records.py, alignment.py, comparison.py for tools/compare_runs.py)."""
from mutual_guide.evaluation.build import build_dataset_evaluator
from mutual_guide.evaluation.evaluators import COCOEvaluatorWithConvention, VOCEvaluator

__all__ = ["COCOEvaluatorWithConvention", "VOCEvaluator", "build_dataset_evaluator"]
