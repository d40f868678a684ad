"""The evaluation report (OUTPUT_DIR/eval/<dataset>/): per-class table, precision-recall curves and confusion matrix,
from the same numbers as the headline metric, for VOC- and COCO-style evaluations of the generated data."""
import json
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
import train_net

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.data.custom import register_custom_dataset
from mutual_guide.evaluation.evaluators import COCOEvaluatorWithConvention, VOCEvaluator
from mutual_guide.evaluation.report import RECALL_GRID, confusion_matrix, interpolated_precision
from mutual_guide.utils.drawing import PALETTE

CLASSES = ["circle", "square", "triangle"]
REPORT_FILES = ["alignment.json", "alignment.png", "confusion_matrix.png", "per_class.json", "per_image.json.gz",
                "pr_curve.png"]


# ----------------------------------------------------------------------------- the confusion matrix's rule
def test_confusion_matrix_on_a_hand_made_case():
    # classes 0 cat, 1 dog, 2 bird; index 3 is background; score threshold 0.3, IoU 0.5
    images = [
        {   # ground truth: A cat, B dog, C bird (difficult: ignored), D cat
            "gt_classes": [0, 1, 2, 0], "gt_ignore": [False, False, True, False],
            "pred_classes": [0, 0, 1, 2, 2, 1],
            "pred_scores": [0.9, 0.8, 0.7, 0.6, 0.5, 0.2],
            "ious": [
                [0.8, 0.0, 0.0, 0.0],  # cat .9 takes A: [cat, cat]
                [0.7, 0.0, 0.0, 0.6],  # cat .8: A is taken, takes D: [cat, cat]
                [0.9, 0.4, 0.0, 0.0],  # dog .7: no dog >= .5; A (cat) is taken: background [bg, dog]
                [0.0, 0.0, 0.7, 0.0],  # bird .6 takes C, which is ignored: not counted at all
                [0.0, 0.55, 0.0, 0.0],  # bird .5: C is taken; B (dog) unmatched at .55: [dog, bird]
                [0.0, 0.9, 0.0, 0.0],  # dog .2: under the score threshold, not counted
            ],
        },
        # a bird nobody found: [bird, bg]
        {"gt_classes": [2], "gt_ignore": [False], "pred_classes": [], "pred_scores": [], "ious": np.zeros((0, 1))},
        # a bird on no object: [bg, bird]
        {"gt_classes": [], "gt_ignore": [], "pred_classes": [2], "pred_scores": [0.95], "ious": np.zeros((1, 0))},
        {   # step 2 in score order across classes: dog .8 takes the cat before bird .7, whose IoU is larger
            "gt_classes": [0], "gt_ignore": [False], "pred_classes": [2, 1], "pred_scores": [0.7, 0.8],
            "ious": [[0.9], [0.6]],
        },
    ]
    expected = np.array([
        # cat dog bird bg      (predicted)
        [2, 1, 0, 0],  # cat   (ground truth)
        [0, 0, 1, 0],  # dog
        [0, 0, 0, 1],  # bird
        [0, 1, 2, 0],  # background
    ])
    np.testing.assert_array_equal(confusion_matrix(images, 3, iou_threshold=0.5, score_threshold=0.3), expected)


def test_interpolated_precision_against_a_plain_loop():
    rng = np.random.RandomState(0)
    for _ in range(20):
        n = rng.randint(0, 30)
        recall = np.sort(rng.choice(np.linspace(0, 1, 21), n))  # repeated recalls happen
        precision = rng.uniform(0, 1, n)
        expected = [max((p for r, p in zip(recall, precision) if r >= t), default=0.0) for t in RECALL_GRID]
        np.testing.assert_array_equal(interpolated_precision(recall, precision), expected)


# ----------------------------------------------------------------------------- evaluators on the generated data
@pytest.fixture(scope="module", params=["voc", "coco"])
def generated(request, tmp_path_factory):
    """(format, test dataset name, its records) of a generated dataset of 16 test images."""
    fmt = request.param
    name = f"rep{fmt}{uuid.uuid4().hex[:6]}"
    info = make_synthetic_dataset(str(tmp_path_factory.mktemp(fmt)), fmt=fmt, num_train=1, num_test=16, seed=3,
                                  name=name)
    for spec in info["custom_specs"]:
        register_custom_dataset(spec)
    return fmt, f"{name}_test", DatasetCatalog.get(f"{name}_test")


def _predictions(records, seed=0):
    """
    Every ground-truth box moved by up to half a pixel, each kept (score .4-1), given the next class, dropped, or
    kept and predicted twice (the copy scores lower); plus one detection per image under the score threshold.
    Returns the model outputs per record and the confusion matrix this must give at score .3: objects overlap
    by at most 30% of the smaller one (make_synthetic_dataset), so no box reaches IoU .5 with another object.
    """
    rng = np.random.RandomState(seed)
    outputs, expected = [], np.zeros((4, 4), dtype=np.int64)
    for record in records:
        detections = [([5.0, 5.0, 60.0, 60.0], 0.1, 0)]  # under the score threshold: in no count
        for ann in record["annotations"]:
            box = np.array(BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS))
            box = box + rng.uniform(-0.5, 0.5, 4)
            truth, fate = ann["category_id"], rng.choice(["kept", "flipped", "dropped", "twice"], p=[.6, .15, .1, .15])
            if fate == "dropped":
                expected[truth, 3] += 1
                continue
            predicted = (truth + 1) % 3 if fate == "flipped" else truth  # one way only: rows and columns differ
            score = rng.uniform(0.4, 1.0)
            detections.append((box, score, predicted))
            expected[truth, predicted] += 1
            if fate == "twice":  # the copy finds its object taken: a false detection
                detections.append((box + 0.3, score - 0.05, truth))
                expected[3, truth] += 1
        boxes, scores, classes = zip(*detections)
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32))
        instances.scores = torch.tensor(scores, dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        outputs.append({"instances": instances})
    return outputs, expected


def _check_pictures(folder, class_colours=True):
    """Both pictures decode, are large enough to read, and are not blank; the PR curves show each class's colour."""
    for name, min_size in (("pr_curve.png", (600, 900)), ("confusion_matrix.png", (600, 600))):
        image = cv2.imread(os.path.join(folder, name))
        assert image is not None and image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1], name
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, f"{name} is nearly blank"
    if class_colours:
        curves = cv2.imread(os.path.join(folder, "pr_curve.png"))[:, :, ::-1].astype(int)
        for k in range(len(CLASSES)):
            colour = np.round(np.array(PALETTE[k]) * 255).astype(int)
            assert (np.abs(curves - colour).sum(-1) < 30).sum() > 200, f"no curve of {CLASSES[k]}"


@pytest.mark.slow
def test_report_has_the_metrics_own_numbers(generated, tmp_path, logged):
    fmt, name, records = generated
    messages = logged("mutual_guide.evaluation.report")
    folder = str(tmp_path / "eval" / name)
    if fmt == "voc":
        evaluator = VOCEvaluator(name, report_dir=folder, report_score_thresh=0.3)
    else:
        evaluator = COCOEvaluatorWithConvention(name, tasks=("bbox",), report_dir=folder, report_score_thresh=0.3)
    outputs, expected_confusion = _predictions(records)
    evaluator.reset()
    for record, output in zip(records, outputs):
        evaluator.process([record], [output])
    headline = evaluator.evaluate()["bbox"]
    assert sorted(os.listdir(folder)) == REPORT_FILES

    with open(os.path.join(folder, "per_class.json")) as f:
        report = json.load(f)
    assert [c["name"] for c in report["classes"]] == CLASSES
    objects = np.bincount([a["category_id"] for r in records for a in r["annotations"]], minlength=3)
    assert [c["num_ground_truth"] for c in report["classes"]] == objects.tolist()
    assert 20 < headline["AP"] < headline["AP50"] < 95  # a metric with room for the per-class numbers to differ
    for key in ("AP", "AP50", "AP75"):
        per_class = [c[key] for c in report["classes"]]
        assert len(set(per_class)) == 3, (key, per_class)
        assert np.mean(per_class) == pytest.approx(headline[key], abs=2e-3)  # the JSON keeps 3 decimals
        assert report["mean"][key] == pytest.approx(headline[key], abs=5e-4)
        if fmt == "coco" and key == "AP":  # detectron2's own per-category AP, from the same array
            assert per_class == pytest.approx([headline[f"AP-{c}"] for c in CLASSES], abs=5e-4)
    confusion = report["confusion_matrix"]
    assert confusion["labels"] == CLASSES + ["background"] and confusion["score_threshold"] == 0.3
    np.testing.assert_array_equal(confusion["counts"], expected_confusion)
    assert expected_confusion[:3, :3].trace() > 0 and expected_confusion[:3, 3].sum() > 0  # every kind happened
    between_classes = expected_confusion[:3, :3]
    assert expected_confusion[3].sum() > 0 and not np.array_equal(between_classes, between_classes.T)
    _check_pictures(folder)
    table = "\n".join(messages)
    for c, row in zip(CLASSES, report["classes"]):
        assert f"| {c} " in table and f"{row['AP50']:.1f}" in table


@pytest.mark.slow
def test_reports_of_a_trained_model_on_both_layouts(tmp_path, train_args):
    # The trainer's own evaluation (COCO layout) and --eval-only with its weights (VOC layout) both leave the report
    # in OUTPUT_DIR/eval/<dataset>/, its mean the AP they return.
    runs = {}
    for fmt in ("coco", "voc"):
        name = f"tr{fmt}{uuid.uuid4().hex[:6]}"
        info = make_synthetic_dataset(str(tmp_path / fmt), fmt=fmt, num_train=8, num_test=4, seed=5, name=name)
        runs[fmt] = (info, f"{name}_test")
    info, name = runs["coco"]
    opts = ("TEST.DRAW_SCORE_THRESH", 0.4)
    trainer = train_net.Trainer(train_net.setup(train_args(info, tmp_path / "train", "SOLVER.MAX_ITER", 6, *opts)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = {"coco": trainer._last_eval_results["bbox"]}
    info, name = runs["voc"]
    weights = tmp_path / "train" / "model_final.pth"
    results["voc"] = train_net.main(
        train_args(info, tmp_path / "eval_voc", "MODEL.WEIGHTS", weights, *opts, eval_only=True))["bbox"]
    for fmt, output_dir in (("coco", "train"), ("voc", "eval_voc")):
        folder = tmp_path / output_dir / "eval" / runs[fmt][1]
        assert sorted(os.listdir(folder)) == REPORT_FILES, fmt
        with open(folder / "per_class.json") as f:
            report = json.load(f)
        assert [c["name"] for c in report["classes"]] == CLASSES
        assert report["mean"]["AP"] == pytest.approx(results[fmt]["AP"], abs=5e-4), fmt
        assert report["mean"]["AP50"] == pytest.approx(results[fmt]["AP50"], abs=5e-4), fmt
        assert all(c["num_ground_truth"] > 0 for c in report["classes"])  # else the VOC mean is NaN
        assert report["confusion_matrix"]["score_threshold"] == 0.4  # TEST.DRAW_SCORE_THRESH
        _check_pictures(str(folder), class_colours=False)  # after 6 iterations the curves lie along the axes


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_a_class_without_ground_truth(fmt, tmp_path):
    # A fourth class, "hexagon", that no test image holds; one false hexagon per image. Its AP is the metric's
    # (null in the JSON when NaN); the mean is the metric's too, without it (VOC and COCO alike).
    name = f"nogt{fmt}{uuid.uuid4().hex[:6]}"
    info = make_synthetic_dataset(str(tmp_path), fmt=fmt, num_train=1, num_test=6, seed=7, name=name)
    if fmt == "voc":
        spec = f"{name}:voc:root={tmp_path};split=test;classes={','.join(CLASSES)},hexagon"
    else:
        with open(info["splits"]["test"]["json_file"]) as f:
            data = json.load(f)
        data["categories"].append({"id": 4, "name": "hexagon"})
        with open(tmp_path / "four.json", "w") as f:
            json.dump(data, f)
        spec = f"{name}:coco:json={tmp_path / 'four.json'};images={info['splits']['test']['image_root']}"
    register_custom_dataset(spec)
    records = DatasetCatalog.get(name)
    folder = str(tmp_path / "eval")
    evaluator = (VOCEvaluator(name, report_dir=folder) if fmt == "voc"
                 else COCOEvaluatorWithConvention(name, tasks=("bbox",), report_dir=folder))
    outputs, _ = _predictions(records, seed=1)
    evaluator.reset()
    for record, output in zip(records, outputs):
        instances = output["instances"]
        hexagon = Instances(instances.image_size, pred_boxes=Boxes(torch.tensor([[70.0, 70.0, 100.0, 100.0]])),
                            scores=torch.tensor([0.8]), pred_classes=torch.tensor([3]))
        evaluator.process([record], [{"instances": Instances.cat([instances, hexagon])}])
    headline = evaluator.evaluate()["bbox"]
    with open(os.path.join(folder, "per_class.json")) as f:
        report = json.load(f)
    assert [c["name"] for c in report["classes"]] == CLASSES + ["hexagon"]
    assert report["classes"][3]["num_ground_truth"] == 0
    assert report["confusion_matrix"]["counts"][4][3] == len(records)  # every hexagon is a false detection
    assert report["classes"][3]["AP"] is None and report["mean_over"] == "defined"
    assert report["left_out_of_mean"] == ["hexagon"]
    assert report["mean"]["AP"] == pytest.approx(headline["AP"], abs=5e-4)
    assert np.mean([c["AP"] for c in report["classes"][:3]]) == pytest.approx(headline["AP"], abs=2e-3)
    _check_pictures(folder)  # the three classes with objects are drawn
