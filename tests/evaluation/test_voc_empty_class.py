"""
A class declared in a VOC test set without any object (classes=circle,square,triangle, no triangle drawn) is
left out of the mean AP and named, the way pycocotools skips it for COCO: detectron2's VOC metric gives it NaN
(with predictions; 0 without) and every metric, hence TEST.BEST_METRIC and model_best.pth, went NaN with it.
"""
import json
import os
import uuid

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from mutual_guide.data.check import check_dataset
from mutual_guide.data.custom import register_custom_dataset
from mutual_guide.evaluation.evaluators import VOCEvaluator


@pytest.fixture
def shapes_test_set(tmp_path, write_voc, voc_object):
    """Three images holding a circle and a square each; triangle is declared and never drawn."""
    objects = [voc_object("circle", (3, 3, 20, 20)), voc_object("square", (30, 20, 50, 40))]
    root = write_voc(tmp_path, {"a": objects, "b": objects, "c": objects}, split="test")
    name = f"noobj{uuid.uuid4().hex[:8]}"
    register_custom_dataset(f"{name}:voc:root={root};split=test;classes=circle,square,triangle")
    return name, os.path.join(root, "ImageSets", "Main", "test.txt")


def _evaluate(name, false_triangles, report_dir=None):
    """Every object found exactly (score 0.9), and with `false_triangles` one triangle per image where none is."""
    evaluator = VOCEvaluator(name, report_dir=report_dir)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        classes = [a["category_id"] for a in record["annotations"]]
        if false_triangles:
            boxes, classes = boxes + [[5.0, 25.0, 25.0, 45.0]], classes + [2]
        instances = Instances((record["height"], record["width"]), pred_boxes=Boxes(torch.tensor(boxes)),
                              scores=torch.full((len(boxes),), 0.9), pred_classes=torch.tensor(classes))
        evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


@pytest.mark.parametrize("false_triangles", [True, False])
def test_a_class_without_objects_is_left_out_of_the_mean(shapes_test_set, false_triangles, logged):
    name, _ = shapes_test_set
    messages = logged("mutual_guide.evaluation")
    # detectron2's metric: triangle NaN with its false detections (mean NaN), 0 without (mean 66.7)
    metrics = _evaluate(name, false_triangles)
    assert metrics == {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0), "AP75": pytest.approx(100.0)}
    assert any(f"{name}: 1 class(es) without ground truth (no object, or only difficult ones) left out of the "
               "mean AP: triangle" in m for m in messages)


def test_the_table_and_the_check_name_the_class(shapes_test_set, tmp_path, logged):
    name, split_file = shapes_test_set
    messages = logged("mutual_guide.evaluation")
    folder = str(tmp_path / "eval")
    _evaluate(name, false_triangles=True, report_dir=folder)
    with open(os.path.join(folder, "per_class.json")) as f:
        report = json.load(f)
    assert [(c["name"], c["num_ground_truth"], c["AP50"]) for c in report["classes"]] == [
        ("circle", 3, 100.0), ("square", 3, 100.0), ("triangle", 0, None)]
    assert report["mean"]["AP50"] == 100.0 and report["mean_over"] == "defined"
    assert report["left_out_of_mean"] == ["triangle"]
    table = next(m for m in messages if m.startswith("Per-class results"))
    assert table.rstrip().endswith("Without ground truth, left out of the mean: triangle")
    assert np.isnan(float(table.splitlines()[-3].split("|")[3]))  # triangle's AP cell, above the mean row
    warnings = [str(p) for p in check_dataset(name, progress=False).warnings]
    assert warnings == [f"warning: {split_file}: class 'triangle' (class 2) has no object in dataset '{name}': "
                        "training never sees it, and the evaluation leaves it out of the mean AP"]
