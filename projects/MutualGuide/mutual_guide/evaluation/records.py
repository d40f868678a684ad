"""
`per_image.json.gz`: what an evaluation saw, image by image, in the numbers its metric used; the evidence the
alignment report (alignment.py) and tools/compare_runs.py are computed from, needing nothing else.

    {"dataset", "classes": [K names], "metric": "VOC" | "COCO", "voc07": 11-point VOC AP, "box_convention",
     "nms_thresh", "score_thresh", "removed_recorded": whether the model gave its removed candidates,
     "images": [{"image_id", "file_name",
                 "gt":  [[class, x0, y0, x1, y1, ignore, area], ...],
                 "det": [[class, score, x0, y0, x1, y1], ...],
                 "removed": [[class, score, x0, y0, x1, y1, kept_index], ...]}, ...]}

Boxes are XYXY as the metric reads them: VOC the result lines' numbers (xmin, ymin + 1, one decimal) and the
XML's ground truth; COCO x + w, y + h of the results json and of the annotations. `ignore` is 1 for a difficult
(VOC) or crowd (COCO) object; `area` is the object's area for the size ranges (COCO: the annotation's `area`;
VOC: the box's, inclusive pixels). `det` are the kept detections in the model's order (by score); `score` is the
model's (VOC ranks by it at 3 decimals, as its result lines). Images are in the order the evaluation saw them.

`removed` (the bound that keeps a COCO run small): of the candidates NMS removed (above the test score
threshold), for each (kept detection, object of its class) pair only the removed candidate with the largest
IoU with that object, and only when that IoU is >= 0.5 and larger than the kept detection's: the only candidates
that can make a matched detection "worse placed than one it removed" (alignment.py). So at most one per
(kept detection, object) pair; `kept_index` is the index in `det` of the detection that removed it.
"""
import gzip
import json
import os

import numpy as np

from detectron2.utils import comm

from mutual_guide.evaluation.matching import record_ious
from mutual_guide.utils.atomic_io import AtomicFile

__all__ = ["RECORDS_FILE", "ImageRecords", "coco_detection_rows", "near_an_object", "read_records",
           "voc_detection_rows", "worth_keeping", "write_records"]

RECORDS_FILE = "per_image.json.gz"
REMOVED_MIN_IOU = 0.5


def voc_detection_rows(instances):
    """[class, score, x0, y0, x1, y1] rows of Instances as PascalVOCDetectionEvaluator.process writes them:
    float32 xmin, ymin + 1, every coordinate at one decimal ("%.1f"); the full score (ranked at "%.3f")."""
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float32, copy=True)
    boxes[:, :2] += np.float32(1)
    coords = [float(f"{v:.1f}") for v in boxes.ravel().tolist()]
    rows = []
    for n, (score, cls) in enumerate(zip(instances.scores.tolist(), instances.pred_classes.tolist())):
        rows.append([cls, score, *coords[4 * n: 4 * n + 4]])
    return rows


def coco_detection_rows(json_instances, contiguous):
    """[class, score, x0, y0, x1, y1] rows of instances_to_coco_json's dicts (x + w, y + h: w back exactly);
    `contiguous` maps a category id to its class index (identity before the evaluator maps them back)."""
    return [[contiguous(d["category_id"]), d["score"], d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
             d["bbox"][1] + d["bbox"][3]] for d in json_instances]


def near_an_object(metric, boxes, classes, gt, min_iou=REMOVED_MIN_IOU - 0.05):
    """
    [R] bool: which removed candidates (XYXY `boxes` near the metric's numbers, before their rounding; [R]
    `classes`) overlap an object of their class (`gt` rows) by at least `min_iou`: a cheap first cut before the
    candidates are written as rows, loose enough (0.45) that rounding cannot take out one `worth_keeping` keeps.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not gt or not len(boxes):
        return np.zeros(len(boxes), dtype=bool)
    gt_a = np.asarray(gt, dtype=np.float64)
    ious = record_ious(metric, boxes, gt_a[:, 1:5], gt_a[:, 5] > 0)
    same = np.asarray(classes)[:, None] == gt_a[None, :, 0]
    return ((ious >= min_iou) & same).any(axis=1)


def worth_keeping(metric, removed, det, gt):
    """
    The rows of `removed` ([class, score, box, kept_index]) the module docstring's bound keeps: per (kept
    detection, object of its class), the one of largest IoU with the object, if >= 0.5 and above the kept one's.
    """
    if not removed or not gt:
        return []
    removed_a, det_a, gt_a = (np.asarray(x, dtype=np.float64) for x in (removed, det, gt))
    ignore = gt_a[:, 5] > 0
    iou_removed = record_ious(metric, removed_a[:, 2:6], gt_a[:, 1:5], ignore)  # [R, G]
    kept = removed_a[:, 6].astype(np.int64)
    iou_kept = record_ious(metric, det_a[:, 2:6], gt_a[:, 1:5], ignore)[kept]  # [R, G], of each one's remover
    better = (removed_a[:, :1] == gt_a[None, :, 0]) & (iou_removed >= REMOVED_MIN_IOU) & (iou_removed > iou_kept)
    r, g = np.nonzero(better)
    if len(r) == 0:
        return []
    pair = kept[r] * len(gt_a) + g
    ranked = np.lexsort((-iou_removed[r, g], pair))  # by pair, the largest IoU first
    _, first = np.unique(pair[ranked], return_index=True)
    return [removed[i] for i in sorted(set(r[ranked][first].tolist()))]


class ImageRecords:
    """The records an evaluator collects in `process`, one image at a time."""

    def __init__(self, metric):
        self.metric = metric
        self.images = []
        self.removed_seen = False

    def add(self, image_id, file_name, gt, det, removed=None):
        """`removed`: rows [class, score, box, kept_index] of all removed candidates (bounded here), or None when
        the model gave none."""
        self.removed_seen |= removed is not None
        self.images.append({"image_id": image_id, "file_name": file_name, "gt": gt, "det": det,
                            "removed": worth_keeping(self.metric, removed or [], det, gt)})

    def gathered(self):
        """Every process's images, rank after rank (the order the evaluators gather their predictions in), on the
        main process; None elsewhere."""
        parts = comm.gather((self.images, self.removed_seen), dst=0)
        if not comm.is_main_process():
            return None
        return [image for images, _ in parts for image in images], any(seen for _, seen in parts)


def write_records(folder, header, images):
    """folder/per_image.json.gz from `header` (dataset, classes, metric, ...) and the images; returns its path."""
    path = os.path.join(folder, RECORDS_FILE)
    os.makedirs(folder, exist_ok=True)
    with AtomicFile(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1, mtime=0) as z:  # 5x faster than 6, 15% larger
            z.write(json.dumps({**header, "images": images}, separators=(",", ":")).encode())
    return path


def read_records(path):
    """The records of per_image.json.gz (a file, or the folder holding it); ValueError naming a key missing."""
    if os.path.isdir(path):
        path = os.path.join(path, RECORDS_FILE)
    with gzip.open(path, "rt") as f:
        records = json.load(f)
    for key in ("dataset", "classes", "metric", "images"):
        if key not in records:
            raise ValueError(f"{path}: no {key!r}; not a per_image.json.gz of this project")
    return records
