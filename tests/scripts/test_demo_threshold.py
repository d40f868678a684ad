"""demo.py draws, by default, from the score of best F1 that the evaluation of its weights found."""
import argparse
import json

import demo
import pytest

from detectron2.config import get_cfg


def _cfg(weights, test=("shapes_test",)):
    cfg = get_cfg()
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.DATASETS.TEST = test
    return cfg


def _args(threshold=None, dataset=None):
    return argparse.Namespace(confidence_threshold=threshold, dataset=dataset)


def test_the_evaluations_best_f1_beside_the_weights(tmp_path):
    (tmp_path / "eval" / "shapes_test").mkdir(parents=True)
    (tmp_path / "eval" / "shapes_test" / "per_class.json").write_text(
        json.dumps({"best_f1": {"score": 0.42, "f1": 0.9, "precision": 0.9, "recall": 0.9}}))
    weights = tmp_path / "model_final.pth"
    assert demo.drawing_threshold(_args(), _cfg(weights)) == (pytest.approx(0.42), "best F1 0.90 on shapes_test")
    assert demo.drawing_threshold(_args(0.7), _cfg(weights)) == (0.7, "--confidence-threshold")


def test_one_threshold_per_class_when_the_evaluation_has_them(tmp_path):
    (tmp_path / "eval" / "shapes_test").mkdir(parents=True)
    best = {"f1": 0.8, "precision": 0.8, "recall": 0.8}
    (tmp_path / "eval" / "shapes_test" / "per_class.json").write_text(json.dumps({
        "best_f1": {"score": 0.5, **best},
        "best_f1_per_class": {"circle": {"score": 0.6, **best}, "triangle": {"score": 0.25, **best}}}))
    weights = tmp_path / "model_final.pth"
    assert demo.drawing_threshold(_args(), _cfg(weights), 2) == ([0.6, 0.25], "each class's best-F1 score on shapes_test")
    # a class without a threshold (no ground truth in the evaluation): the best over all classes for every class
    (tmp_path / "eval" / "shapes_test" / "per_class.json").write_text(json.dumps({
        "best_f1": {"score": 0.5, **best}, "best_f1_per_class": {"circle": {"score": 0.6, **best}, "triangle": None}}))
    assert demo.drawing_threshold(_args(), _cfg(weights), 2) == (0.5, "best F1 0.80 on shapes_test")


def test_without_an_evaluation_the_default(tmp_path):
    threshold, why = demo.drawing_threshold(_args(), _cfg(tmp_path / "model_final.pth"))
    assert threshold == demo.DEFAULT_THRESHOLD and why.startswith("default")
