"""
What an evaluation leaves for a person to read, in OUTPUT_DIR/eval/<dataset>/:

- a per-class table (AP, AP50, AP75, ground-truth objects) in the log and in `per_class.json`, with the
  confusion matrix's counts;
- `pr_curve.png`: precision against recall at IoU 0.5, one curve per class and their mean;
- `confusion_matrix.png`: ground-truth class against predicted class, background included, at IoU 0.5 and
  the drawing score threshold (TEST.DRAW_SCORE_THRESH).

The evaluators (evaluators.py) fill a `ClassResults` from the very computation that gives their headline metric
(our VOC evaluator's per-class APs; pycocotools' `eval["precision"]` for COCO), so the table's mean is the
reported AP. Only the confusion matrix is computed here, by `confusion_matrix`.
"""
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
from tabulate import tabulate

from mutual_guide.utils.atomic_io import AtomicFile

__all__ = ["RECALL_GRID", "best_f1_threshold", "best_f1_thresholds", "ClassResults", "confusion_matrix", "interpolated_precision", "write_evaluation_report"]

logger = logging.getLogger(__name__)

# Recall points of the curves: pycocotools' recThrs (0, 0.01, ..., 1), so that VOC and COCO curves are alike.
RECALL_GRID = np.linspace(0.0, 1.0, 101)
METRICS = ("AP", "AP50", "AP75")


@dataclass
class ClassResults:
    """
    Per-class numbers of one evaluation, K classes, percentages; NaN where a class has no ground truth.

    names: K class names.
    ap: {"AP": [K], "AP50": [K], "AP75": [K]}.
    num_ground_truth: [K] objects that count (VOC: not difficult; COCO: not crowd).
    precision: [K, len(RECALL_GRID)] interpolated precision at IoU 0.5 (0-1), NaN rows for classes without
        ground truth.
    mean_over: "all" when the metric's mean is over every class (a NaN class makes it NaN, as detectron2's VOC
        evaluator), "defined" when classes without ground truth are left out (our VOC evaluator and COCO's).
    metric: the metric's name, shown in titles.
    """

    names: list
    ap: dict
    num_ground_truth: np.ndarray
    precision: np.ndarray
    mean_over: str
    metric: str

    def mean(self, key):
        values = np.asarray(self.ap[key], dtype=np.float64)
        if self.mean_over == "defined":
            values = values[np.isfinite(values)]
            return float(np.mean(values)) if values.size else float("nan")
        return float(np.mean(values))


def interpolated_precision(recall, precision, grid=RECALL_GRID):
    """
    Precision at each recall of `grid`: the best precision reached at that recall or beyond (0 past the last
    recall reached); the envelope both the VOC and the COCO metric integrate. `recall` is non-decreasing.
    """
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if recall.size == 0:
        return np.zeros(len(grid))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    first = np.searchsorted(recall, grid, side="left")
    return np.where(first < recall.size, envelope[np.minimum(first, recall.size - 1)], 0.0)


def confusion_matrix(images, num_classes, iou_threshold=0.5, score_threshold=0.3):
    """
    Counts of (ground-truth class, predicted class) over all images, as a (K + 1) x (K + 1) int64 array:
    rows are ground truth, columns predictions, index K is background. In each image, only predictions
    scoring at least `score_threshold` take part, and:

    1. Within each class, predictions in decreasing score order each take the still unmatched ground truth
       of their class with the largest IoU, if that IoU is at least `iou_threshold`: [c, c] += 1. A
       prediction that takes an ignored ground truth (VOC difficult, COCO crowd) is not counted at all.
    2. The predictions left, in decreasing score order (all classes together), each take the still unmatched,
       not ignored ground truth of another class with the largest IoU >= `iou_threshold`: [g, p] += 1.
    3. Predictions still left are false detections: [K, p] += 1; ground truths still unmatched and not
       ignored are missed: [g, K] += 1. [K, K] stays 0.
    Ties (equal scores, equal IoUs) go to the lower index, as numpy's stable sort and argmax give.

    `images` yields dicts with "pred_classes" [D], "pred_scores" [D], "gt_classes" [G], "gt_ignore" [G] (bool)
    and "ious" [D, G] (prediction x ground truth, in the metric's own IoU).
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    background = num_classes
    for image in images:
        keep = np.asarray(image["pred_scores"], dtype=np.float64) >= score_threshold
        pred_classes = np.asarray(image["pred_classes"], dtype=np.int64)[keep]
        scores = np.asarray(image["pred_scores"], dtype=np.float64)[keep]
        gt_classes = np.asarray(image["gt_classes"], dtype=np.int64)
        ignore = np.asarray(image["gt_ignore"], dtype=bool)
        ious = np.asarray(image["ious"], dtype=np.float64).reshape(len(keep), len(gt_classes))[keep]
        order = np.argsort(-scores, kind="stable")
        gt_taken = np.zeros(len(gt_classes), dtype=bool)
        left = []
        for d in order:  # step 1; one pass in score order is the per-class greedy matching
            candidates = (gt_classes == pred_classes[d]) & ~gt_taken & (ious[d] >= iou_threshold)
            if not candidates.any():
                left.append(d)
                continue
            g = int(np.argmax(np.where(candidates, ious[d], -1.0)))
            gt_taken[g] = True
            if not ignore[g]:
                matrix[pred_classes[d], pred_classes[d]] += 1
        for d in left:  # steps 2 and 3
            candidates = (gt_classes != pred_classes[d]) & ~gt_taken & ~ignore & (ious[d] >= iou_threshold)
            if candidates.any():
                g = int(np.argmax(np.where(candidates, ious[d], -1.0)))
                gt_taken[g] = True
                matrix[gt_classes[g], pred_classes[d]] += 1
            else:
                matrix[background, pred_classes[d]] += 1
        for g in np.flatnonzero(~gt_taken & ~ignore):
            matrix[gt_classes[g], background] += 1
    return matrix


F1_SCORE_FLOOR = 0.05  # predictions below this score are never drawn by default: not scanned for the best F1


def best_f1_threshold(images, iou_threshold=0.5, floor=F1_SCORE_FLOOR):
    """
    The score threshold that a person should believe by default: the one of best F1 over all classes, matching as
    step 1 of `confusion_matrix` (within each class, in decreasing score order, the unmatched ground truth of
    largest IoU >= `iou_threshold`; a match of an ignored ground truth counts neither way). F1 at threshold t is
    2 TP / (2 TP + FP + FN) over the predictions scoring at least t. `images` is `confusion_matrix`'s input.
    Returns {"score", "f1", "precision", "recall"}, or None when there is no ground truth or no prediction.
    """
    return best_f1_thresholds(images, 0, iou_threshold, floor)[0]


def best_f1_thresholds(images, num_classes, iou_threshold=0.5, floor=F1_SCORE_FLOOR):
    """`best_f1_threshold` over all classes, and the same for each of `num_classes` classes alone: (all, [per class])."""
    classes, scores, hits = [], [], []
    truth = np.zeros(max(num_classes, 1), dtype=np.int64)
    num_truth = 0
    for image in images:
        pred_scores = np.asarray(image["pred_scores"], dtype=np.float64)
        keep = pred_scores >= floor
        pred_classes = np.asarray(image["pred_classes"], dtype=np.int64)[keep]
        pred_scores = pred_scores[keep]
        gt_classes = np.asarray(image["gt_classes"], dtype=np.int64)
        ignore = np.asarray(image["gt_ignore"], dtype=bool)
        ious = np.asarray(image["ious"], dtype=np.float64).reshape(len(keep), len(gt_classes))[keep]
        num_truth += int((~ignore).sum())
        if num_classes:
            np.add.at(truth, gt_classes[~ignore], 1)
        taken = np.zeros(len(gt_classes), dtype=bool)
        for d in np.argsort(-pred_scores, kind="stable"):
            candidates = (gt_classes == pred_classes[d]) & ~taken & (ious[d] >= iou_threshold)
            if candidates.any():
                g = int(np.argmax(np.where(candidates, ious[d], -1.0)))
                taken[g] = True
                if ignore[g]:
                    continue
            classes.append(pred_classes[d])
            scores.append(pred_scores[d])
            hits.append(bool(candidates.any()))
    classes, scores, hits = np.asarray(classes, dtype=np.int64), np.asarray(scores), np.asarray(hits, dtype=bool)
    per_class = [_best_f1(scores[classes == k], hits[classes == k], int(truth[k])) for k in range(num_classes)]
    return _best_f1(scores, hits, num_truth), per_class


def _best_f1(scores, hits, num_truth):
    if num_truth == 0 or len(scores) == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, tp = scores[order], np.cumsum(hits[order])
    fp = np.arange(1, len(ranked) + 1) - tp
    f1 = 2 * tp / (2 * tp + fp + (num_truth - tp))
    # a threshold keeps every prediction of its score: only the last of a run of equal scores is a cut
    cut = np.r_[ranked[1:] != ranked[:-1], True]
    best = int(np.flatnonzero(cut)[np.argmax(f1[cut])])
    return {"score": float(ranked[best]), "f1": float(f1[best]), "precision": float(tp[best] / (best + 1)),
            "recall": float(tp[best] / num_truth)}


def _number(value, digits=3):
    """A JSON number, or null for NaN (JSON has no NaN)."""
    return round(float(value), digits) if np.isfinite(value) else None


def per_class_table(results):
    """The log's table: one row per class and the mean row, whose AP columns are the metric's."""
    rows = [
        [name, int(n)] + [results.ap[key][k] for key in METRICS]
        for k, (name, n) in enumerate(zip(results.names, results.num_ground_truth))
    ]
    rows.append(["mean", int(np.sum(results.num_ground_truth))] + [results.mean(key) for key in METRICS])
    table = tabulate(rows, headers=["class", "objects", *METRICS], tablefmt="pipe", floatfmt=".1f", numalign="right")
    skipped = left_out_of_mean(results)
    if skipped:
        table += f"\nWithout ground truth, left out of the mean: {', '.join(skipped)}"
    return table


def left_out_of_mean(results):
    """Names of the classes the mean leaves out (no ground truth), when the mean is over defined classes only."""
    if results.mean_over != "defined":
        return []
    return [name for name, ap in zip(results.names, results.ap["AP"]) if not np.isfinite(ap)]


def write_evaluation_report(folder, dataset_name, results, confusion, score_threshold, iou_threshold=0.5,
                            best_f1=None, best_f1_per_class=None):
    """
    Log the per-class table and write per_class.json, pr_curve.png and confusion_matrix.png into `folder`
    (created). `confusion` is `confusion_matrix`'s output for the same classes; `best_f1` and `best_f1_per_class`,
    `best_f1_thresholds`' (the thresholds demo.py draws with by default). Returns the three paths.
    """
    from mutual_guide.evaluation.plots import (  # matplotlib only when a report is drawn
        plot_confusion_matrix,
        plot_pr_curves,
    )

    os.makedirs(folder, exist_ok=True)
    logger.info(f"Per-class results on {dataset_name}, {results.metric}; also in {folder}:\n"
                f"{per_class_table(results)}")
    if best_f1 is not None:
        logger.info(f"Best F1 at IoU 0.5 over all classes: {best_f1['f1']:.3f} from score {best_f1['score']:.3f} "
                    f"(precision {best_f1['precision']:.3f}, recall {best_f1['recall']:.3f}); demo.py draws from it "
                    "by default")
    labels = list(results.names) + ["background"]
    report = {
        "dataset": dataset_name,
        "metric": results.metric,
        "classes": [
            {"name": name, "num_ground_truth": int(n), **{key: _number(results.ap[key][k]) for key in METRICS}}
            for k, (name, n) in enumerate(zip(results.names, results.num_ground_truth))
        ],
        "mean": {key: _number(results.mean(key)) for key in METRICS},
        "mean_over": results.mean_over,
        "left_out_of_mean": left_out_of_mean(results),
        "best_f1": best_f1,
        "best_f1_per_class": {
            name: best for name, best in zip(results.names, best_f1_per_class or [None] * len(results.names))
        },
        "confusion_matrix": {
            "iou_threshold": iou_threshold,
            "score_threshold": score_threshold,
            "labels": labels,
            "rows": "ground truth",
            "columns": "prediction",
            "counts": confusion.tolist(),
        },
    }
    paths = [os.path.join(folder, name) for name in ("per_class.json", "pr_curve.png", "confusion_matrix.png")]
    with AtomicFile(paths[0], "w") as f:
        json.dump(report, f, indent=1)
    plot_pr_curves(paths[1], dataset_name, results)
    plot_confusion_matrix(paths[2], dataset_name, labels, confusion, iou_threshold, score_threshold)
    return paths
