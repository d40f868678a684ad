"""
The alignment report on hand-made records whose answers are worked out by hand, the removed-candidate bound, and
the AP recomputed from the records against the evaluators' own (VOC 2007 and 2012 with difficult objects, COCO
with a crowd object and its size ranges).
"""
import gzip
import json
import os
import uuid

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.data.builtin import register_voc_checked
from mutual_guide.data.custom import register_custom_dataset
from mutual_guide.evaluation.alignment import alignment_report, kendall_tau_b, spearman
from mutual_guide.evaluation.evaluators import COCOEvaluatorWithConvention, VOCEvaluator
from mutual_guide.evaluation.records import read_records, worth_keeping
from mutual_guide.modeling.postprocessing import REMOVED_CANDIDATES

# VOC boxes are inclusive: [1, 1, 10, 10] is 10 x 10 pixels. A copy moved right by d pixels overlaps it on
# (10 - d) x 10 of a union of 200 - (10 - d) * 10: IoU (10 - d) / (10 + d): d=0 -> 1, 1 -> 9/11, 2 -> 8/12.
OBJECTS = [[1, 1, 10, 10], [31, 1, 40, 10], [61, 1, 70, 10]]


def shifted(box, d):
    return [box[0] + d, box[1], box[2] + d, box[3]]


def hand_records(dets, removed=(), gt=None):
    gt = gt if gt is not None else [[0, *b, 0, 100.0] for b in OBJECTS]
    return {"dataset": "hand", "classes": ["thing", "other"], "metric": "VOC", "voc07": False, "nms_thresh": 0.5,
            "removed_recorded": True,
            "images": [{"image_id": "a", "file_name": "a.jpg", "gt": gt, "det": dets, "removed": list(removed)}]}


def test_score_in_iou_order_correlates_1_reversed_minus_1():
    ious = {0: 1.0, 1: 9 / 11, 2: 8 / 12}
    aligned = [[0, 0.9, *shifted(OBJECTS[0], 0)], [0, 0.6, *shifted(OBJECTS[1], 1)], [0, 0.3, *shifted(OBJECTS[2], 2)]]
    report = alignment_report(hand_records(aligned))["overall"]
    assert report["matched"] == 3 and report["spearman"] == pytest.approx(1.0) and report["kendall"] == pytest.approx(1.0)
    assert report["mean_iou"] == pytest.approx(np.mean(list(ious.values())))
    reversed_scores = [[0, 0.3, *shifted(OBJECTS[0], 0)], [0, 0.6, *shifted(OBJECTS[1], 1)],
                       [0, 0.9, *shifted(OBJECTS[2], 2)]]
    report = alignment_report(hand_records(reversed_scores))["overall"]
    assert report["spearman"] == pytest.approx(-1.0) and report["kendall"] == pytest.approx(-1.0)
    # every object found by one detection: AP 100 at 0.5; at 0.75 the third (IoU .667) is a false positive,
    # ranked first (reversed) or last (aligned): precision 0, then 1/2, 2/3 at recall 0, 1/3, 2/3 -> AP75
    # (area under the envelope) 2/3 * 2/3 = 44.4; aligned: 1/3 + 1/3 = 66.7
    assert report["AP50"] == pytest.approx(100.0) and report["AP75"] == pytest.approx(400 / 9)
    assert alignment_report(hand_records(aligned))["overall"]["AP75"] == pytest.approx(200 / 3)


def test_nms_kept_a_box_worse_placed_by_a_known_iou():
    dets = [[0, 0.9, *shifted(OBJECTS[0], 2)], [0, 0.8, *OBJECTS[1]]]  # IoU 8/12 and 1
    removed = [[0, 0.7, *shifted(OBJECTS[0], 1), 0],  # IoU 9/11 > 8/12: better placed, removed by detection 0
               [0, 0.6, *shifted(OBJECTS[1], 1), 1]]  # IoU 9/11 < 1: worse than its remover
    report = alignment_report(hand_records(dets, removed))
    overall = report["overall"]
    gap = 9 / 11 - 8 / 12  # 0.1515
    assert overall["matched"] == 2 and overall["worse_placed"] == pytest.approx(0.5)
    assert overall["worse_placed_count"] == 1 and overall["gap_mean"] == pytest.approx(gap)
    assert overall["iou_lost"] == pytest.approx(gap / 2)
    assert report["gap_histogram"]["counts"][3] == 1 and sum(report["gap_histogram"]["counts"]) == 1  # 0.15-0.2
    assert report["per_class"]["thing"]["worse_placed"] == pytest.approx(0.5)
    assert report["per_size"]["small"]["worse_placed"] == pytest.approx(0.5)  # 100 px objects are small
    assert report["per_size"]["large"]["matched"] == 0 and np.isnan(report["per_size"]["large"]["AP50"])
    without = alignment_report({**hand_records(dets, removed), "removed_recorded": False})["overall"]
    assert np.isnan(without["worse_placed"]) and without["matched"] == 2


def test_the_bound_keeps_one_better_candidate_per_detection_and_object():
    gt = [[0, *OBJECTS[0], 0, 100.0], [1, *OBJECTS[1], 0, 100.0]]
    det = [[0, 0.9, *shifted(OBJECTS[0], 2)], [1, 0.9, *shifted(OBJECTS[1], 3)]]  # IoU 8/12 and 7/13
    removed = [
        [0, 0.8, *shifted(OBJECTS[0], 1), 0],  # 9/11: better, but not the best of detection 0 on object 0
        [0, 0.7, *OBJECTS[0], 0],  # 1: the best: kept
        [0, 0.6, *shifted(OBJECTS[0], 3), 0],  # 7/13 < 8/12: not better
        [1, 0.5, *shifted(OBJECTS[1], 2), 1],  # 8/12 > 7/13 on object 1 of its class: kept
        [1, 0.4, *shifted(OBJECTS[0], 1), 1],  # overlaps object 0, of another class: not kept
    ]
    assert worth_keeping("VOC", removed, det, gt) == [removed[1], removed[3]]
    assert worth_keeping("VOC", removed, det, []) == []


def test_rank_correlations_against_plain_formulas():
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 6, 40).astype(float), rng.randint(0, 5, 40).astype(float)  # many ties
    pairs = [(i, j) for i in range(40) for j in range(i + 1, 40)]
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    tx, ty = sum(x[i] != x[j] for i, j in pairs), sum(y[i] != y[j] for i, j in pairs)
    assert kendall_tau_b(x, y) == pytest.approx(s / np.sqrt(tx * ty))
    rank = lambda v: np.array([np.sum(v < a) + (np.sum(v == a) + 1) / 2 for a in v])  # noqa: E731
    assert spearman(x, y) == pytest.approx(np.corrcoef(rank(x), rank(y))[0, 1])
    assert np.isnan(spearman([1.0], [2.0])) and np.isnan(spearman([1.0, 1.0], [2.0, 3.0]))


# ----------------------------------------------------------------------------- records of the evaluators
def _predict(records, seed, ground_truth_as_predictions):
    """Every object found 0-3 times with jitter (duplicates), 10% in a wrong class, and false positives; scores
    at 2 decimals, so ties happen."""
    rng = np.random.RandomState(seed)
    for record in records:
        boxes, scores, classes = [], [], []
        for box, _, cls in zip(*ground_truth_as_predictions(record)):
            for _ in range(rng.randint(0, 4)):
                boxes.append(np.array(box) + rng.normal(0, 3, 4))
                scores.append(round(rng.uniform(0, 1), 2))
                classes.append(cls if rng.rand() < 0.9 else rng.randint(3))
        for _ in range(4):
            x0, y0 = rng.uniform(0, 60, 2)
            boxes.append([x0, y0, x0 + rng.uniform(3, 40), y0 + rng.uniform(3, 40)])
            scores.append(round(rng.uniform(0, 0.7), 2))
            classes.append(rng.randint(3))
        order = np.argsort(-np.array(scores), kind="stable")
        yield record, Instances((record["height"], record["width"]),
                                pred_boxes=Boxes(torch.tensor(np.array(boxes)[order], dtype=torch.float32)),
                                scores=torch.tensor(np.array(scores)[order], dtype=torch.float32),
                                pred_classes=torch.tensor(np.array(classes)[order]))


def _evaluate(evaluator, predictions):
    evaluator.reset()
    for record, instances in predictions:
        evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


@pytest.mark.slow
@pytest.mark.parametrize("year", [2007, 2012])
def test_voc_ap_from_the_records_is_the_evaluators(year, tmp_path, write_voc, voc_object, unique_name,
                                                   ground_truth_as_predictions):
    rng = np.random.RandomState(1)
    images = {}
    for i in range(15):
        objects = []
        for _ in range(rng.randint(1, 5)):
            x0, y0 = rng.randint(1, 50), rng.randint(1, 40)
            objects.append(voc_object(("cat", "dog", "bird")[rng.randint(3)],
                                      (x0, y0, x0 + rng.randint(8, 40), y0 + rng.randint(8, 30)),
                                      difficult=int(rng.rand() < 0.15)))
        images[f"{i:06d}"] = objects
    root = write_voc(tmp_path / "voc", images, split="test", size=(96, 72))
    name = unique_name("voc_align")
    register_voc_checked(name, root, "test", year, ("cat", "dog", "bird"))
    records = DatasetCatalog.get(name)
    folder = str(tmp_path / "eval")
    headline = _evaluate(VOCEvaluator(name, report_dir=folder),
                         _predict(records, 0, ground_truth_as_predictions))
    saved = read_records(folder)
    assert saved["metric"] == "VOC" and saved["voc07"] == (year == 2007) and len(saved["images"]) == 15
    assert not saved["removed_recorded"] and any(g[5] for im in saved["images"] for g in im["gt"])  # difficult
    overall = alignment_report(saved)["overall"]
    for key in ("AP", "AP50", "AP75"):
        assert overall[key] == pytest.approx(headline[key], abs=1e-9), key
    with open(os.path.join(folder, "alignment.json")) as f:
        assert json.load(f)["evaluator"]["AP50"] == pytest.approx(headline["AP50"], abs=1e-6)


@pytest.mark.slow
def test_coco_ap_from_the_records_is_pycocotools(tmp_path, ground_truth_as_predictions):
    name = f"coal{uuid.uuid4().hex[:6]}"
    info = make_synthetic_dataset(str(tmp_path), fmt="coco", num_train=1, num_test=20, seed=4, name=name)
    test_json = info["splits"]["test"]["json_file"]
    with open(test_json) as f:
        data = json.load(f)
    data["annotations"][0]["iscrowd"] = 1  # a crowd object: ignored, and measured over the detection's area
    with open(tmp_path / "crowd.json", "w") as f:
        json.dump(data, f)
    register_custom_dataset(f"{name}_crowd:coco:json={tmp_path / 'crowd.json'};"
                            f"images={info['splits']['test']['image_root']}")
    records = DatasetCatalog.get(f"{name}_crowd")
    folder = str(tmp_path / "eval")
    headline = _evaluate(COCOEvaluatorWithConvention(f"{name}_crowd", tasks=("bbox",), report_dir=folder),
                         _predict(records, 2, ground_truth_as_predictions))
    saved = read_records(folder)
    assert saved["metric"] == "COCO" and sum(g[5] for im in saved["images"] for g in im["gt"]) == 1
    report = alignment_report(saved)
    for key in ("AP", "AP50", "AP75"):
        assert report["overall"][key] == pytest.approx(headline[key], abs=1e-9), key
    # pycocotools' own size ranges (its APs / APm; no large object at 128 px)
    assert report["per_size"]["small"]["AP"] == pytest.approx(headline["APs"], abs=1e-9)
    assert report["per_size"]["medium"]["AP"] == pytest.approx(headline["APm"], abs=1e-9)
    assert 10 < headline["AP"] < 90


@pytest.mark.slow
def test_the_evaluator_records_removed_candidates_in_its_convention(tmp_path, write_voc, voc_object, unique_name):
    # one object [11, 11, 30, 30] in the XML: detectron2's box [10, 10, 30, 30], which the VOC result lines
    # write back as 11, 11, 30, 30; the detection is 2 px right, the removed candidate exact
    root = write_voc(tmp_path / "voc", {"one": [voc_object("cat", (11, 11, 30, 30))]}, split="test", size=(64, 48))
    name = unique_name("voc_removed")
    register_voc_checked(name, root, "test", 2012, ("cat", "dog"))
    record = DatasetCatalog.get(name)[0]
    folder = str(tmp_path / "eval")
    evaluator = VOCEvaluator(name, report_dir=folder, nms_thresh=0.5, score_thresh=0.01)
    detection = Instances((48, 64), pred_boxes=Boxes(torch.tensor([[12.0, 10.0, 32.0, 30.0]])),
                          scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    removed = Instances((48, 64), pred_boxes=Boxes(torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 5.0, 60.0, 40.0]])),
                        scores=torch.tensor([0.8, 0.7]), pred_classes=torch.tensor([0, 0]),
                        kept_index=torch.tensor([0, 0]))
    evaluator.reset()
    evaluator.process([record], [{"instances": detection, REMOVED_CANDIDATES: removed}])
    evaluator.evaluate()
    with gzip.open(os.path.join(folder, "per_image.json.gz"), "rt") as f:
        saved = json.load(f)
    assert saved["removed_recorded"] and saved["nms_thresh"] == 0.5 and saved["score_thresh"] == 0.01
    image = saved["images"][0]
    assert image["gt"] == [[0, 11.0, 11.0, 30.0, 30.0, 0, 400.0]]
    assert image["det"] == [[0, pytest.approx(0.9), 13.0, 11.0, 32.0, 30.0]]
    assert image["removed"] == [[0, pytest.approx(0.8), 11.0, 11.0, 30.0, 30.0, 0]]  # the other overlaps nothing
    with open(os.path.join(folder, "alignment.json")) as f:
        overall = json.load(f)["overall"]
    # the detection overlaps 18 of 20 columns: IoU 360 / 440 = 9/11; the removed one is exact: gap 2/11
    assert overall["worse_placed"] == 1.0 and overall["gap_mean"] == pytest.approx(2 / 11, abs=1e-6)
