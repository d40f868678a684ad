"""
How well a detector's classification agrees with its localisation, from an evaluation's records (records.py).
Pure functions of the records; docs/evaluation.md ("Alignment") has the definitions and a worked example.

For the detections *matched* at IoU 0.5 (the metric's own matching, `matching.py`: VOC IoU > 0.5, COCO >= 0.5,
in score order per class), with IoU their IoU with the object they matched:

- `spearman` (and `kendall`, tau-b, up to KENDALL_MAX_PAIRS detections): rank correlation of score and IoU.
  1: the better placed a box, the higher it scores; 0: the score says nothing of the placement.
- `worse_placed`: share of the matched detections for which NMS removed a candidate (of the same class,
  removed by this detection) with a higher IoU with the same object; `gap_*`: by how much (the best such
  candidate's IoU minus the detection's), over those detections; `iou_lost`: the mean gap over all matched
  detections (0 where none was better), the IoU NMS threw away per matched detection.
- `AP`, `AP50`, `AP75` (percent, the metric's), and `AP50 - AP75`: what the detections lose from IoU 0.5 to 0.75.
All of it over all classes, per class, and per object size (COCO's area ranges, the same pixels for VOC).
"""
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
from tabulate import tabulate

from mutual_guide.evaluation.matching import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    EvaluationSet,
    Matching,
    average_precision,
    match_detections,
    record_ious,
)
from mutual_guide.utils.atomic_io import AtomicFile

__all__ = ["ALIGNMENT_FILE", "DetectionAlignment", "alignment_figures", "alignment_report", "alignment_table",
           "detection_alignment", "kendall_tau_b", "spearman", "write_alignment_report"]

logger = logging.getLogger(__name__)

ALIGNMENT_FILE = "alignment.json"
KENDALL_MAX_PAIRS = 5000  # detections; tau-b is computed pair by pair, in blocks
GAP_BINS = np.linspace(0.0, 0.5, 11)  # histogram of the IoU gaps


@dataclass
class DetectionAlignment:
    """Per detection [D], at IoU 0.5 in one area range: whether it is matched (a true positive), its IoU with the
    object, and the best IoU with that object of the candidates it removed (NaN: none recorded)."""

    matched: np.ndarray
    iou: np.ndarray
    removed_iou: np.ndarray


def detection_alignment(data: EvaluationSet, matching: Matching, records) -> DetectionAlignment:
    t = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    matched = matching.tp[t].copy()
    iou = np.full(len(matched), np.nan)
    removed_iou = np.full(len(matched), np.nan)
    for i, image in enumerate(records["images"]):
        start, end = data.det_start[i], data.det_start[i + 1]
        local = np.flatnonzero(matched[start:end])
        g = matching.gt_index[t, start + local]
        iou[start + local] = data.ious[i][local, g]
        if len(local) == 0 or not image.get("removed"):
            continue
        owner, ious = _removed_ious(data, records, i)
        for r in np.flatnonzero(matched[owner]):
            d = owner[r]
            value = ious[r, matching.gt_index[t, d]]
            if not value <= removed_iou[d]:  # NaN (none yet) or larger
                removed_iou[d] = value
    return DetectionAlignment(matched, iou, removed_iou)


def _removed_ious(data, records, i):
    """(owner [R]: global index of the detection that removed each, [R, G] IoU with the objects) of image i's
    removed candidates, computed once per EvaluationSet (every area range reads them)."""
    key = ("removed_ious", i)
    if key not in data.cache:
        removed = np.asarray(records["images"][i]["removed"], dtype=np.float64).reshape(-1, 7)
        gt = data.gt[i]
        data.cache[key] = (data.det_start[i] + removed[:, 6].astype(np.int64),
                           record_ious(data.metric, removed[:, 2:6], gt["boxes"], gt["ignore"]))
    return data.cache[key]


def _ranks(x):
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x, y):
    """Spearman's rank correlation (Pearson's of the average ranks); NaN under 2 values or without spread."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x) - (len(x) + 1) / 2.0, _ranks(y) - (len(y) + 1) / 2.0
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def kendall_tau_b(x, y, block=1000):
    """Kendall's tau-b over all pairs; NaN under 2 values, without spread, or above KENDALL_MAX_PAIRS values."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 2 or n > KENDALL_MAX_PAIRS:
        return float("nan")
    concordance, ties_x, ties_y = 0.0, 0.0, 0.0
    for start in range(0, n, block):
        sx = np.sign(x[start:start + block, None] - x[None, :])
        sy = np.sign(y[start:start + block, None] - y[None, :])
        concordance += (sx * sy).sum()
        ties_x += (sx != 0).sum()
        ties_y += (sy != 0).sum()
    denominator = np.sqrt(ties_x * ties_y)  # pairs not tied in x, times pairs not tied in y (each pair twice)
    return float(concordance / denominator) if denominator > 0 else float("nan")


def alignment_figures(data, matching, alignment, image_weights=None, classes=None, kendall=True,
                      removed_recorded=True):
    """
    The module docstring's figures for the detections of `classes` (all when None), each image counting
    `image_weights[i]` times (a bootstrap resample; default once). A dict of floats (NaN where undefined; the
    NMS figures too when the records hold no removed candidates, `removed_recorded` False).
    """
    weights = np.ones(data.num_images) if image_weights is None else np.asarray(image_weights, dtype=np.float64)
    ap = average_precision(data, matching, weights)[:, classes if classes is not None else slice(None)] * 100
    ap = ap.reshape(len(IOU_THRESHOLDS), -1)
    per_threshold = _mean_defined(ap, axis=1)
    at = {round(t, 2): per_threshold[n] for n, t in enumerate(IOU_THRESHOLDS)}
    selected = alignment.matched.copy()
    if classes is not None:
        selected &= np.isin(data.det_class, np.atleast_1d(classes))
    copies = weights[data.det_image].astype(np.int64)
    chosen = np.repeat(np.flatnonzero(selected), copies[selected])  # each detection once per copy of its image
    scores, ious, removed = data.det_score[chosen], alignment.iou[chosen], alignment.removed_iou[chosen]
    gap = np.where(removed > ious, removed - ious, 0.0)
    worse = gap > 0
    figures = {
        "AP": float(np.nanmean(per_threshold)) if np.isfinite(per_threshold).any() else float("nan"),
        "AP50": at[0.5], "AP75": at[0.75], "AP50_minus_AP75": at[0.5] - at[0.75],
        "matched": int(len(chosen)),
        "spearman": spearman(scores, ious),
        "kendall": kendall_tau_b(scores, ious) if kendall else float("nan"),
        "mean_iou": float(ious.mean()) if len(ious) else float("nan"),
        "worse_placed": float(worse.mean()) if len(chosen) else float("nan"),
        "worse_placed_count": int(worse.sum()),
        "gap_mean": float(gap[worse].mean()) if worse.any() else float("nan"),
        "gap_median": float(np.median(gap[worse])) if worse.any() else float("nan"),
        "gap_p90": float(np.quantile(gap[worse], 0.9)) if worse.any() else float("nan"),
        "iou_lost": float(gap.mean()) if len(chosen) else float("nan"),
    }
    if not removed_recorded:
        figures.update({k: float("nan") for k in ("worse_placed", "gap_mean", "gap_median", "gap_p90", "iou_lost")})
        figures["worse_placed_count"] = 0
    return figures


def _mean_defined(values, axis):
    values = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(values)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    count = defined.sum(axis=axis)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def alignment_report(records, with_points=False):
    """
    The report of one evaluation's records: {"overall", "per_class": {name: figures}, "per_size": {size:
    figures}, "gap_histogram", "removed_recorded", ...}, figures as `alignment_figures`. With `with_points`,
    also (scores, IoUs) of the matched detections, the plot's points.
    """
    data = EvaluationSet.from_records(records)
    matching = match_detections(data, "all")
    alignment = detection_alignment(data, matching, records)
    recorded = bool(records.get("removed_recorded", False))
    overall = alignment_figures(data, matching, alignment, removed_recorded=recorded)
    per_class = {name: alignment_figures(data, matching, alignment, classes=[k], removed_recorded=recorded)
                 for k, name in enumerate(records["classes"])}
    per_size = {}
    for size in ("small", "medium", "large"):
        sized = match_detections(data, size)
        per_size[size] = alignment_figures(data, sized, detection_alignment(data, sized, records),
                                           removed_recorded=recorded)
    matched = alignment.matched
    gap = alignment.removed_iou[matched] - alignment.iou[matched]
    counts, _ = np.histogram(gap[gap > 0], bins=GAP_BINS)
    report = {
        "dataset": records["dataset"],
        "metric": records["metric"],
        "nms_thresh": records.get("nms_thresh"),
        "removed_recorded": bool(records.get("removed_recorded", False)),
        "num_images": data.num_images,
        "overall": overall,
        "per_class": per_class,
        "per_size": per_size,
        "size_ranges": {k: list(AREA_RANGES[k]) for k in ("small", "medium", "large")},
        "gap_histogram": {"bins": GAP_BINS.tolist(), "counts": counts.tolist()},
    }
    if with_points:
        return report, (data.det_score[matched], alignment.iou[matched])
    return report


_COLUMNS = (("matched", "matched", "d"), ("spearman", "Spearman", ".3f"), ("kendall", "Kendall", ".3f"),
            ("worse_placed", "worse placed %", "pct"), ("gap_mean", "mean gap", ".3f"),
            ("AP50", "AP50", ".1f"), ("AP75", "AP75", ".1f"), ("AP50_minus_AP75", "AP50-AP75", ".1f"))


def _cell(value, fmt):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if fmt == "pct":
        return f"{100 * value:.1f}"
    return format(value, fmt)


def alignment_table(report):
    """The log's table: a row per class, per size and over all."""
    rows = [[name] + [_cell(f[key], fmt) for key, _, fmt in _COLUMNS] for name, f in report["per_class"].items()]
    rows += [[f"({size})"] + [_cell(f[key], fmt) for key, _, fmt in _COLUMNS] for size, f in report["per_size"].items()]
    rows.append(["all"] + [_cell(report["overall"][key], fmt) for key, _, fmt in _COLUMNS])
    return tabulate(rows, headers=["class"] + [title for _, title, _ in _COLUMNS], tablefmt="pipe",
                    disable_numparse=True, colalign=("left",) + ("right",) * len(_COLUMNS))


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_alignment_report(folder, records, evaluator_metrics=None):
    """
    alignment.json and alignment.png into `folder`, the table into the log. `evaluator_metrics` (the evaluator's
    AP, AP50, AP75) go into the json beside the records' own, which they must equal. Returns the report.
    """
    from mutual_guide.evaluation.plots import plot_alignment  # matplotlib only when a report is drawn

    report, (scores, ious) = alignment_report(records, with_points=True)
    if evaluator_metrics:
        report["evaluator"] = {k: float(evaluator_metrics[k]) for k in ("AP", "AP50", "AP75") if k in evaluator_metrics}
        differences = [abs(report["overall"][k] - v) for k, v in report["evaluator"].items() if np.isfinite(v)]
        if differences and max(differences) > 1e-6:
            logger.warning(f"{records['dataset']}: the AP recomputed from {folder}'s records differs from the "
                           f"evaluator's by up to {max(differences):.2g} points")
    os.makedirs(folder, exist_ok=True)
    with AtomicFile(os.path.join(folder, ALIGNMENT_FILE), "w") as f:
        json.dump(_json_ready(report), f, indent=1)
    plot_alignment(os.path.join(folder, "alignment.png"), [(records["dataset"], scores, ious, report["overall"])])
    removed = "" if report["removed_recorded"] else " (the model gave no removed candidates: NMS columns empty)"
    logger.info(f"Alignment of score and IoU on {records['dataset']} (detections matched at IoU 0.5){removed}; also "
                f"in {folder}/{ALIGNMENT_FILE}:\n{alignment_table(report)}")
    return report
