"""The default drawing threshold: the score of best F1, on hand-made predictions whose counts are written out."""
import pytest

from mutual_guide.evaluation.report import best_f1_threshold, best_f1_thresholds


def _images(extra_false=0):
    # image 1: one class-0 object; a hit (0.9), a miss elsewhere (0.8), a duplicate of the hit (0.7)
    one = {"pred_classes": [0, 0, 0], "pred_scores": [0.9, 0.8, 0.7], "gt_classes": [0], "gt_ignore": [False],
           "ious": [[0.9], [0.0], [0.9]]}
    # image 2: two class-1 objects, hit at 0.6 and 0.3; `extra_false` misses at 0.2
    two = {"pred_classes": [1, 1] + [1] * extra_false, "pred_scores": [0.6, 0.3] + [0.2] * extra_false,
           "gt_classes": [1, 1], "gt_ignore": [False, False],
           "ious": [[0.8, 0.0], [0.0, 0.8]] + [[0.0, 0.0]] * extra_false}
    return [one, two]


def test_the_threshold_of_best_f1():
    # ranked: 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, 0.3 TP, then 3 x 0.2 FP; 3 objects. F1 = 2TP / (2TP + FP + FN):
    # 0.9: 2/4 = .5; 0.8: 2/5; 0.7: 2/6; 0.6: 4/7 = .571; 0.3: 6/8 = .75; 0.2: 6/11 = .545
    best = best_f1_threshold(_images(extra_false=3))
    assert best == pytest.approx({"score": 0.3, "f1": 0.75, "precision": 0.6, "recall": 1.0})


def test_equal_scores_are_kept_or_dropped_together():
    images = _images()
    images[1]["pred_classes"].append(1)  # a miss at 0.3, the score of the last hit: no cut between the two
    images[1]["pred_scores"].append(0.3)
    images[1]["ious"].append([0.0, 0.0])
    best = best_f1_threshold(images)
    # 0.3 keeps 3 TP and 3 FP: 6/9 = .667, more than 0.6's 4/7
    assert best["score"] == 0.3 and best["f1"] == pytest.approx(6 / 9)


def test_ignored_objects_count_neither_way_and_nothing_gives_none():
    images = _images()
    images[0]["gt_ignore"] = [True]  # the class-0 object is "difficult": its hit is not a TP, nor an FP
    best = best_f1_threshold(images)
    # left: 0.8 FP, 0.7 FP (the duplicate finds the object taken: a miss), 0.6 TP, 0.3 TP; 2 objects
    assert best == pytest.approx({"score": 0.3, "f1": 4 / 6, "precision": 0.5, "recall": 1.0})
    assert best_f1_threshold([]) is None
    assert best_f1_threshold([{"pred_classes": [], "pred_scores": [], "gt_classes": [0], "gt_ignore": [False],
                               "ious": []}]) is None


def test_each_class_alone():
    overall, (zero, one) = best_f1_thresholds(_images(extra_false=3), 2)
    assert overall == best_f1_threshold(_images(extra_false=3))
    # class 0: 0.9 TP, 0.8 FP, 0.7 FP over 1 object: best at 0.9, F1 2/(2+0+0) = 1
    assert zero == pytest.approx({"score": 0.9, "f1": 1.0, "precision": 1.0, "recall": 1.0})
    # class 1: 0.6 TP, 0.3 TP, 3 x 0.2 FP over 2 objects: best at 0.3, F1 1
    assert one == pytest.approx({"score": 0.3, "f1": 1.0, "precision": 1.0, "recall": 1.0})
