"""
The VOC and COCO metrics recomputed from per-image records (records.py), with every detection's match kept.

`match_detections` matches each image's detections to its objects by the metric's own rule, at every IoU
threshold of 0.50:0.95 at once; `average_precision` integrates the result, optionally with a weight per image
(a bootstrap resample: an image drawn k times weighs k). On the full set they give the evaluator's numbers:

- VOC (detectron2's voc_eval, our VOCEvaluator): scores at 3 decimals and boxes as the result lines hold them;
  per class one ranking of all detections (numpy's default sort of the lines' order, as voc_eval); a detection
  takes the object of its class with the largest IoU (inclusive pixels, `voc_iou`), a true positive if IoU > t
  and that object is not yet found, nothing if it is difficult, else a false positive; 11-point AP for VOC2007
  data, the area under the curve otherwise.
- COCO (pycocotools' COCOeval): per image and class the 100 best detections; each takes, among the objects of
  its class not yet taken (a crowd one can be taken again), the one of largest IoU >= t, a not-ignored one
  before an ignored one; detections on ignored objects (crowd, or outside the area range) and unmatched ones
  outside the area range count neither way; 101-point interpolated AP.

Area ranges (COCO's, in pixels; the same bounds for VOC, whose metric has none): an object outside the range
counts like a difficult / crowd one, a detection matching nothing and outside it is left out.
"""
from dataclasses import dataclass, field
from typing import List

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["AREA_RANGES", "IOU_THRESHOLDS", "EvaluationSet", "Matching", "average_precision", "match_detections",
           "record_ious", "voc_iou"]

IOU_THRESHOLDS = np.array([t / 100 for t in range(50, 100, 5)])  # 0.50, 0.55, ..., 0.95
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}
COCO_MAX_DETS = 100
COCO_RECALLS = np.linspace(0.0, 1.0, 101)


def voc_iou(detections, ground_truth):
    """
    [D, G] IoU of XYXY boxes as detectron2's voc_eval measures it: pixels are inclusive (+1 on each side), and
    the arithmetic is done in its order, so the values are its own to the last bit.
    """
    bb, gt = detections[:, None, :], ground_truth[None, :, :]
    iw = np.maximum(np.minimum(gt[..., 2], bb[..., 2]) - np.maximum(gt[..., 0], bb[..., 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[..., 3], bb[..., 3]) - np.maximum(gt[..., 1], bb[..., 1]) + 1.0, 0.0)
    inters = iw * ih
    union = (bb[..., 2] - bb[..., 0] + 1.0) * (bb[..., 3] - bb[..., 1] + 1.0) + (gt[..., 2] - gt[..., 0] + 1.0) * (
        gt[..., 3] - gt[..., 1] + 1.0
    ) - inters
    return inters / union


def record_ious(metric, boxes, gt_boxes, gt_ignore):
    """[D, G] IoU of XYXY `boxes` with the objects, as `metric` ("VOC" or "COCO") measures it (COCO: pycocotools,
    a crowd object, ignored in COCO records, over the detection's area)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if metric == "VOC":
        return voc_iou(boxes, gt_boxes)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return np.zeros((len(boxes), len(gt_boxes)))
    xywh = lambda b: np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)  # noqa: E731
    ious = mask_util.iou(xywh(boxes), xywh(gt_boxes), [int(x) for x in gt_ignore])
    return np.asarray(ious, dtype=np.float64).reshape(len(boxes), len(gt_boxes))


def metric_scores(metric, scores):
    """The scores the metric ranks by: VOC's result lines hold 3 decimals ("%.3f"), COCO's json the full value."""
    if metric == "VOC":
        return np.array([float(f"{s:.3f}") for s in scores], dtype=np.float64)
    return np.asarray(scores, dtype=np.float64)


@dataclass
class EvaluationSet:
    """
    One evaluation's records as arrays. I images, D detections (all images, in record order), K classes.

    det_image, det_class [D]; det_score [D] (as recorded), rank_score [D] (as the metric ranks them);
    det_boxes [D, 4]; gt (per image): boxes [G, 4], classes [G], ignore [G] bool, area [G]; ious (per image)
    [D_i, G_i]; det_start [I + 1]: image i's detections are det_start[i]:det_start[i + 1].
    """

    metric: str
    voc07: bool
    num_classes: int
    image_ids: list
    det_image: np.ndarray
    det_class: np.ndarray
    det_score: np.ndarray
    rank_score: np.ndarray
    det_boxes: np.ndarray
    det_start: np.ndarray
    gt: List[dict]
    ious: List[np.ndarray]
    cache: dict = field(default_factory=dict, repr=False)  # what does not depend on the area range

    @classmethod
    def from_records(cls, records):
        metric = records["metric"]
        if metric not in ("VOC", "COCO"):
            raise ValueError(f"records of {records.get('dataset')!r}: metric must be 'VOC' or 'COCO', got {metric!r}")
        dets, gts, ious, starts = [], [], [], [0]
        for image in records["images"]:
            det = np.asarray(image["det"], dtype=np.float64).reshape(-1, 6)
            gt = np.asarray(image["gt"], dtype=np.float64).reshape(-1, 7)
            gts.append({"boxes": gt[:, 1:5], "classes": gt[:, 0].astype(np.int64), "ignore": gt[:, 5] > 0,
                        "area": gt[:, 6]})
            ious.append(record_ious(metric, det[:, 2:6], gt[:, 1:5], gt[:, 5] > 0))
            dets.append(det)
            starts.append(starts[-1] + len(det))
        det = np.concatenate(dets) if dets else np.zeros((0, 6))
        return cls(
            metric=metric, voc07=bool(records.get("voc07", False)), num_classes=len(records["classes"]),
            image_ids=[image["image_id"] for image in records["images"]],
            det_image=np.repeat(np.arange(len(dets)), [len(d) for d in dets]).astype(np.int64),
            det_class=det[:, 0].astype(np.int64), det_score=det[:, 1], rank_score=metric_scores(metric, det[:, 1]),
            det_boxes=det[:, 2:6], det_start=np.asarray(starts, dtype=np.int64), gt=gts, ious=ious,
        )

    @property
    def num_images(self):
        return len(self.gt)

    def det_area(self):
        w, h = self.det_boxes[:, 2] - self.det_boxes[:, 0], self.det_boxes[:, 3] - self.det_boxes[:, 1]
        return (w + 1.0) * (h + 1.0) if self.metric == "VOC" else w * h


@dataclass
class Matching:
    """
    Every detection's fate at each IoU threshold T (IOU_THRESHOLDS) for one area range.

    tp, fp: [T, D] bool (both False: counted neither way); gt_index: [T, D] the object it took in its image
    (-1: none); npos: [I, K] objects that count per image and class; order: per class, its detections' indices
    in the metric's ranking.
    """

    tp: np.ndarray
    fp: np.ndarray
    gt_index: np.ndarray
    npos: np.ndarray
    order: List[np.ndarray]


def match_detections(data: EvaluationSet, area_range="all") -> Matching:
    lo, hi = AREA_RANGES[area_range]
    num_t, num_d = len(IOU_THRESHOLDS), len(data.det_class)
    tp = np.zeros((num_t, num_d), dtype=bool)
    fp = np.zeros((num_t, num_d), dtype=bool)
    gt_index = np.full((num_t, num_d), -1, dtype=np.int64)
    npos = np.zeros((data.num_images, data.num_classes), dtype=np.int64)
    det_outside = (data.det_area() < lo) | (data.det_area() > hi)
    ignored = []  # per image: objects that count neither way in this range
    for i, gt in enumerate(data.gt):
        ignore = gt["ignore"] | (gt["area"] < lo) | (gt["area"] > hi)
        ignored.append(ignore)
        np.add.at(npos[i], gt["classes"][~ignore], 1)
    if data.metric == "VOC":
        order = _voc_match(data, ignored, det_outside, tp, fp, gt_index)
    else:
        order = _coco_match(data, ignored, det_outside, tp, fp, gt_index)
    return Matching(tp, fp, gt_index, npos, order)


def _voc_match(data, ignored, det_outside, tp, fp, gt_index):
    """voc_eval's matching, vectorised: a detection takes its best-IoU object of its class (found or not)."""
    best_iou = np.full(len(data.det_class), -np.inf)
    best_gt = np.full(len(data.det_class), -1, dtype=np.int64)
    best_ignored = np.zeros(len(data.det_class), dtype=bool)
    for i, gt in enumerate(data.gt):
        start, end = data.det_start[i], data.det_start[i + 1]
        if end == start or len(gt["classes"]) == 0:
            continue
        same = gt["classes"][None, :] == data.det_class[start:end, None]
        ious = np.where(same, data.ious[i], -np.inf)
        has = same.any(axis=1)
        j = np.argmax(ious, axis=1)  # the first of equal IoUs, as np.argmax in voc_eval
        best_iou[start:end] = np.where(has, ious[np.arange(end - start), j], -np.inf)
        best_gt[start:end] = np.where(has, j, -1)
        best_ignored[start:end] = has & ignored[i][j]
    orders = []
    for k in range(data.num_classes):
        members = np.flatnonzero(data.det_class == k)  # the lines' order: image by image, detection by detection
        order = members[np.argsort(-data.rank_score[members])]  # voc_eval's (unstable, default) sort
        orders.append(order)
        for t, thresh in enumerate(IOU_THRESHOLDS):
            hit = best_iou[order] > thresh
            counted = hit & ~best_ignored[order]
            # the first detection in the ranking to reach an object finds it; later ones are false positives
            key = data.det_image[order] * (1 << 20) + best_gt[order]
            first = np.zeros(len(order), dtype=bool)
            where = np.flatnonzero(counted)
            _, first_of_key = np.unique(key[where], return_index=True)
            first[where[first_of_key]] = True
            tp[t, order] = first
            fp[t, order] = (counted & ~first) | (~hit & ~det_outside[order])
            gt_index[t, order] = np.where(first, best_gt[order], -1)
    return orders


def _coco_ranking(data):
    """
    (considered [D], orders): COCOeval keeps the 100 best detections per image and class; per class, its ranking
    takes the images in increasing id (its imgIds), each image's detections by score, then sorts them all by
    score, stably (its accumulate). Independent of the area range: computed once per EvaluationSet.
    """
    if "coco_ranking" not in data.cache:
        index = np.arange(len(data.det_class))
        grouped = np.lexsort((index, -data.rank_score, data.det_class, data.det_image))  # image, class, score
        key = data.det_image[grouped] * (data.num_classes + 1) + data.det_class[grouped]
        first = np.r_[0, np.flatnonzero(key[1:] != key[:-1]) + 1]
        rank = np.arange(len(grouped)) - np.repeat(first, np.diff(np.r_[first, len(grouped)]))
        considered = np.zeros(len(index), dtype=bool)
        considered[grouped[rank < COCO_MAX_DETS]] = True
        image_rank = np.argsort(np.argsort(np.asarray(data.image_ids), kind="mergesort"), kind="mergesort")
        orders = []
        for k in range(data.num_classes):
            members = np.flatnonzero((data.det_class == k) & considered)
            members = members[np.lexsort((members, -data.rank_score[members], image_rank[data.det_image[members]]))]
            orders.append(members[np.argsort(-data.rank_score[members], kind="mergesort")])
        data.cache["coco_ranking"] = (considered, orders)
    return data.cache["coco_ranking"]


def _coco_match(data, ignored, det_outside, tp, fp, gt_index):
    """COCOeval.evaluateImg per image and class (the 100 best detections), every IoU threshold at once. Only the
    detections with an IoU >= 0.5 with an object of their class can match: the loop visits those alone."""
    num_t = len(IOU_THRESHOLDS)
    considered, orders = _coco_ranking(data)
    fp[:] = (~det_outside & considered)[None, :]
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # pycocotools: not below min(t, 1 - 1e-10)
    for i, gt in enumerate(data.gt):
        start, end = data.det_start[i], data.det_start[i + 1]
        if end == start or len(gt["classes"]) == 0:
            continue
        classes = data.det_class[start:end]
        same = classes[:, None] == gt["classes"][None, :]
        hits = np.flatnonzero(((data.ious[i] >= thresholds[0]) & same).any(axis=1) & considered[start:end])
        for k in np.unique(classes[hits]):
            dets = start + hits[classes[hits] == k]
            dets = dets[np.argsort(-data.rank_score[dets], kind="mergesort")]
            objects = np.flatnonzero(gt["classes"] == k)
            objects = objects[np.argsort(ignored[i][objects], kind="mergesort")]  # not-ignored ones first
            obj_ignored = ignored[i][objects]
            crowd = gt["ignore"][objects]
            taken = np.zeros((num_t, len(objects)), dtype=bool)
            matched_ignored = np.zeros((num_t, len(dets)), dtype=bool)
            ious = data.ious[i][dets - start][:, objects]
            for n, d in enumerate(dets):
                eligible = (ious[n][None, :] >= thresholds) & (~taken | crowd)  # not taken, unless a crowd
                for pool in (~obj_ignored, obj_ignored):  # a not-ignored object first, as its break rule does
                    pick = eligible & pool[None, :]
                    found = pick.any(axis=1) & (gt_index[:, d] < 0)
                    if not found.any():
                        continue
                    scores = np.where(pick, ious[n][None, :], -1.0)
                    # the last of equal IoUs: its loop replaces the match when IoU >= the best so far
                    last = scores.shape[1] - 1 - np.argmax(scores[:, ::-1], axis=1)
                    for t in np.flatnonzero(found):
                        gt_index[t, d] = objects[last[t]]
                        taken[t, last[t]] = True
                        matched_ignored[t, n] = obj_ignored[last[t]]
            matched = gt_index[:, dets] >= 0
            tp[:, dets] = matched & ~matched_ignored
            fp[:, dets] = ~matched & ~det_outside[dets][None, :]
    return orders


def average_precision(data: EvaluationSet, matching: Matching, image_weights=None):
    """
    [T, K] AP (0-1) per IoU threshold and class; NaN for a class without objects that count. `image_weights`
    [I] (default 1): each detection and object counts its image's weight, the AP of a set holding image i
    image_weights[i] times (ties between copies of one detection aside).
    """
    num_t = len(IOU_THRESHOLDS)
    ap = np.full((num_t, data.num_classes), np.nan)
    weights = np.ones(data.num_images) if image_weights is None else np.asarray(image_weights, dtype=np.float64)
    npos = weights @ matching.npos  # [K]
    for k, order in enumerate(matching.order):
        if npos[k] <= 0:
            continue
        w = weights[data.det_image[order]]
        keep = w > 0
        order, w = order[keep], w[keep]
        tp = np.cumsum(matching.tp[:, order] * w, axis=1)
        fp = np.cumsum(matching.fp[:, order] * w, axis=1)
        rec = tp / npos[k]
        if data.metric == "VOC":
            prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            ap[:, k] = [_voc_ap(rec[t], prec[t], data.voc07) for t in range(num_t)]
        else:
            prec = tp / (tp + fp + np.spacing(1))
            ap[:, k] = [_coco_ap(rec[t], prec[t]) for t in range(num_t)]
    return ap


def _voc_ap(rec, prec, use_07_metric):
    """detectron2's voc_ap with its envelope loop as one maximum.accumulate (the same values)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # its order of additions, so the sum is its own to the last bit
            ap = ap + (np.max(prec[rec >= t]) if np.any(rec >= t) else 0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _coco_ap(rec, prec):
    """COCOeval.accumulate's 101-point precision, averaged."""
    if rec.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    index = np.searchsorted(rec, COCO_RECALLS, side="left")
    return float(np.where(index < rec.size, envelope[np.minimum(index, rec.size - 1)], 0.0).mean())
