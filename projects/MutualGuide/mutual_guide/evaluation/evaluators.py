"""
detectron2's VOC and COCO evaluators, with the ground truth of VOC taken from our reader and the predictions
written in DATASETS.BOX_CONVENTION.

`VOCEvaluator` keeps PascalVOCDetectionEvaluator's metric exactly (its `process`, which writes each detection
as "id score x0 y0 x1 y1" with 3 and 1 decimals, its `voc_ap`, its matching: VOC07 11-point AP for year 2007
data and the area under the curve otherwise, AP over IoU .50:.95 in steps of .05, AP50, AP75, difficult objects
neither counted nor penalised), except for a class without ground truth (declared but with no object, or
only difficult ones, in the test set): detectron2 gives it NaN (or 0 when nothing is predicted) and the
mean becomes NaN; here it is left out of the mean and named in the log, as pycocotools does for COCO.
The other difference is where the ground truth comes from: detectron2's `voc_eval`
re-reads every XML with int() and requires <pose> and <truncated>, so it rejects files our reader (and
therefore training) accepts; here the ground truth is the reader's records, the same ones training used.

With a `report_dir`, both evaluators also leave the per-class table, precision-recall curves and confusion
matrix of evaluation_report.py there, from the same numbers as their metric, and the per-image records
(records.py) with the alignment report computed from them (alignment.py); the metric they return is unchanged.
"""
import logging
from collections import OrderedDict, defaultdict

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.evaluation.pascal_voc_evaluation import voc_ap
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm

from mutual_guide.data.box_convention import evaluation_boxes
from mutual_guide.data.check import checked_records, read_by_our_readers
from mutual_guide.data.problems import DatasetError, format_problems
from mutual_guide.data.voc_reader import read_voc_dataset
from mutual_guide.evaluation.alignment import write_alignment_report
from mutual_guide.evaluation.matching import voc_iou
from mutual_guide.evaluation.records import (
    ImageRecords,
    coco_detection_rows,
    near_an_object,
    voc_detection_rows,
    write_records,
)
from mutual_guide.evaluation.report import (
    RECALL_GRID,
    ClassResults,
    F1_SCORE_FLOOR,
    best_f1_thresholds,
    confusion_matrix,
    interpolated_precision,
    write_evaluation_report,
)
from mutual_guide.modeling.postprocessing import REMOVED_CANDIDATES

__all__ = ["COCOEvaluatorWithConvention", "VOCEvaluator", "voc_ground_truth", "voc_iou"]

_IOU_THRESHOLDS = range(50, 100, 5)


def _with_convention(outputs, convention):
    """`outputs` with every prediction box (and removed candidate's) as the result writers must see it in
    `convention`."""
    if convention == "detectron2":
        return outputs
    converted = []
    for output in outputs:
        output = dict(output)
        for key in ("instances", REMOVED_CANDIDATES):
            if key in output:
                instances = output[key]
                shifted = Instances(instances.image_size, **instances.get_fields())
                shifted.pred_boxes = Boxes(evaluation_boxes(instances.pred_boxes.tensor, convention))
                output[key] = shifted
        converted.append(output)
    return converted


def _records_header(dataset_name, metric, convention, nms_thresh, score_thresh, removed_recorded, voc07=False):
    return {"dataset": dataset_name, "classes": list(MetadataCatalog.get(dataset_name).thing_classes),
            "metric": metric, "voc07": voc07, "box_convention": convention, "nms_thresh": nms_thresh,
            "score_thresh": score_thresh, "removed_recorded": removed_recorded}


def voc_ground_truth(records):
    """
    {image id: (boxes, class ids, difficult)} with the boxes in the XML's own numbers (what detectron2's
    voc_eval reads): the records' xmin/ymin + 1 (our reader gives detectron2's convention, load_voc_instances').
    """
    truth = {}
    for record in records:
        anns = record["annotations"]
        boxes = np.array(
            [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns], dtype=np.float64
        ).reshape(-1, 4)
        boxes[:, :2] += 1.0
        classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        difficult = np.array([bool(a.get("difficult", 0)) for a in anns], dtype=bool)
        truth[record["image_id"]] = (boxes, classes, difficult)
    return truth


class VOCEvaluator(PascalVOCDetectionEvaluator):
    def __init__(self, dataset_name, box_convention="detectron2", skip_bad_images=False, report_dir=None,
                 report_score_thresh=0.3, nms_thresh=None, score_thresh=None, records=True):
        """
        Args:
            report_dir: where the evaluation report and the per-image records go; None: neither.
            report_score_thresh: predictions from this score enter the report's confusion matrix.
            nms_thresh, score_thresh: the model's test-time NMS IoU and score threshold, written in the records.
            records: with `report_dir`, also the per-image records and the alignment report.
        """
        # Not PascalVOCDetectionEvaluator.__init__: it prepares the XML re-reading that this class replaces.
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = meta.thing_classes
        self._is_2007 = meta.year == 2007
        self._box_convention = box_convention
        self._skip_bad_images = skip_bad_images
        self._report_dir = report_dir
        self._report_score_thresh = report_score_thresh
        self._nms_thresh, self._score_thresh = nms_thresh, score_thresh
        self._cpu_device = torch.device("cpu")
        self._logger = logging.getLogger(__name__)
        self._truth_cache = None
        self._records = ImageRecords("VOC")
        self._with_records = bool(report_dir) and records

    def reset(self):
        super().reset()
        self._records = ImageRecords("VOC")

    def _truth(self):
        """voc_ground_truth of the dataset, read once."""
        if self._truth_cache is None:
            self._truth_cache = voc_ground_truth(self._ground_truth_records())
        return self._truth_cache

    def process(self, inputs, outputs):
        outputs = _with_convention(outputs, self._box_convention)
        super().process(inputs, outputs)
        if not self._with_records:
            return
        truth = self._truth()
        for x, output in zip(inputs, outputs):
            boxes, classes, difficult = truth[x["image_id"]]
            area = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
            gt = [[int(c), *b, int(d), a] for b, c, d, a in zip(boxes.tolist(), classes, difficult, area.tolist())]
            removed = output.get(REMOVED_CANDIDATES)
            if removed is not None:
                removed = removed.to(self._cpu_device)
                approx = removed.pred_boxes.tensor.numpy() + np.array([1.0, 1.0, 0.0, 0.0])  # as the lines write them
                removed = removed[torch.from_numpy(near_an_object("VOC", approx, removed.pred_classes.numpy(), gt))]
                removed = [row + [k] for row, k in zip(voc_detection_rows(removed), removed.kept_index.tolist())]
            self._records.add(x["image_id"], x.get("file_name"), gt,
                              voc_detection_rows(output["instances"].to(self._cpu_device)), removed)

    def evaluate(self):
        gathered = self._records.gathered() if self._with_records else None
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return
        predictions = defaultdict(list)
        for predictions_per_rank in all_predictions:
            for cls_id, lines in predictions_per_rank.items():
                predictions[cls_id].extend(lines)
        self._logger.info(
            f"Evaluating {self._dataset_name} with the VOC{2007 if self._is_2007 else 2012} metric, ground truth "
            f"from our VOC reader, boxes in the {self._box_convention!r} convention"
        )
        truth = self._truth()
        aps = defaultdict(list)  # IoU threshold (percent) -> AP per class
        curves = []  # (recall, precision) per class at IoU 0.5
        num_ground_truth = _num_ground_truth(truth, len(self._class_names))
        for cls_id in range(len(self._class_names)):
            class_aps, curve = voc_class_ap(predictions.get(cls_id, []), truth, cls_id, self._is_2007)
            for thresh, ap in class_aps.items():
                # no ground truth: no AP (voc_ap would give NaN, or 0 without predictions)
                aps[thresh].append(ap * 100 if num_ground_truth[cls_id] else np.nan)
            curves.append(curve)
        skipped = [name for name, n in zip(self._class_names, num_ground_truth) if not n]
        if skipped:
            self._logger.warning(
                f"{self._dataset_name}: {len(skipped)} class(es) without ground truth (no object, or only "
                f"difficult ones) left out of the mean AP: {', '.join(skipped)}"
            )
        mean_ap = {iou: _mean_defined(x) for iou, x in aps.items()}
        results = {"AP": np.mean(list(mean_ap.values())), "AP50": mean_ap[50], "AP75": mean_ap[75]}
        if self._report_dir:
            self._write_report(aps, curves, predictions, truth)
        if self._with_records:
            images, removed_recorded = gathered
            header = _records_header(self._dataset_name, "VOC", self._box_convention, self._nms_thresh,
                                     self._score_thresh, removed_recorded, voc07=self._is_2007)
            records = {**header, "images": images}
            write_records(self._report_dir, header, images)
            write_alignment_report(self._report_dir, records, results)
        return OrderedDict(bbox=results)

    def _write_report(self, aps, curves, predictions, truth):
        """The report of evaluation_report.py, from the per-class APs and curves the metric was made of."""
        per_class = np.array([aps[thresh] for thresh in _IOU_THRESHOLDS])  # thresholds x classes
        num_ground_truth = _num_ground_truth(truth, len(self._class_names))
        results = ClassResults(
            names=list(self._class_names),
            ap={"AP": per_class.mean(axis=0), "AP50": np.array(aps[50]), "AP75": np.array(aps[75])},
            num_ground_truth=num_ground_truth,
            precision=np.array([
                interpolated_precision(rec, prec) if n else np.full(len(RECALL_GRID), np.nan)
                for (rec, prec), n in zip(curves, num_ground_truth)
            ]),
            mean_over="defined",
            metric=f"VOC{2007 if self._is_2007 else 2012} metric "
                   f"({'11-point AP' if self._is_2007 else 'area under the curve'})",
        )
        confusion = confusion_matrix(
            _voc_images(predictions, truth, self._report_score_thresh), len(self._class_names), 0.5,
            self._report_score_thresh,
        )
        best_f1, per_class = best_f1_thresholds(_voc_images(predictions, truth, F1_SCORE_FLOOR), len(self._class_names))
        write_evaluation_report(self._report_dir, self._dataset_name, results, confusion, self._report_score_thresh,
                                best_f1=best_f1, best_f1_per_class=per_class)

    def _ground_truth_records(self):
        """The checked records; for a VOC dataset registered with detectron2's loader (which drops
        <difficult>), our reader's records of its folder, as detectron2's evaluator would read that folder."""
        if read_by_our_readers(self._dataset_name):
            return checked_records(self._dataset_name, self._skip_bad_images)
        meta = MetadataCatalog.get(self._dataset_name)
        records, problems = read_voc_dataset(meta.dirname, meta.split, meta.thing_classes)
        errors = [p for p in problems if p.error]
        if errors:
            raise DatasetError(f"Dataset {self._dataset_name!r}: the ground truth cannot be read:\n"
                               f"{format_problems(errors)}", errors)
        return records


def _num_ground_truth(truth, num_classes):
    """[K] objects per class that the VOC metric counts (difficult ones are not), from voc_ground_truth."""
    counted = [classes[~difficult] for _, classes, difficult in truth.values()]
    return np.bincount(np.concatenate(counted or [np.zeros(0, np.int64)]), minlength=num_classes)


def _mean_defined(values):
    """The mean of the classes that have an AP (NaN when none has)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.mean(values)) if values.size else float("nan")


def _parse_lines(lines):
    """(image ids, scores, [N, 4] boxes) of detection lines "id score x0 y0 x1 y1"."""
    split = [line.strip().rsplit(" ", 5) for line in lines]
    image_ids = [x[0] for x in split]
    confidence = np.array([float(x[1]) for x in split])
    detections = np.array([[float(z) for z in x[2:]] for x in split]).reshape(-1, 4)
    return image_ids, confidence, detections


def voc_class_ap(lines, truth, cls_id, use_07_metric):
    """
    ({IoU threshold in percent: AP}, (recall, precision) at IoU 0.5) of one class, as detectron2's voc_eval
    computes them at every threshold, from the detection lines written by PascalVOCDetectionEvaluator.process
    and the ground truth of `voc_ground_truth`. The IoU of each detection with its best ground truth does not
    depend on the threshold, so it is computed once; the matching (a ground truth is found once, difficult ones
    ignored) is redone per threshold, in the same order as detectron2's.
    """
    class_truth = {}
    npos = 0
    for image_id, (boxes, classes, difficult) in truth.items():
        keep = classes == cls_id
        class_truth[image_id] = (boxes[keep], difficult[keep])
        npos += int((~difficult[keep]).sum())

    image_ids, confidence, detections = _parse_lines(lines)
    order = np.argsort(-confidence)  # the same (unstable) sort as detectron2's, so ties order the same
    detections = detections[order, :]
    image_ids = [image_ids[i] for i in order]

    best = []  # (best IoU, index of that ground truth) of each detection
    for image_id, bb in zip(image_ids, detections):
        gt, _ = class_truth[image_id]
        if gt.size == 0:
            best.append((-np.inf, -1))
            continue
        overlaps = voc_iou(bb[None], gt)[0]
        best.append((np.max(overlaps), int(np.argmax(overlaps))))

    aps, curve = {}, None
    for thresh in _IOU_THRESHOLDS:
        found = {image_id: np.zeros(len(gt), dtype=bool) for image_id, (gt, _) in class_truth.items()}
        tp, fp = np.zeros(len(best)), np.zeros(len(best))
        for d, (image_id, (ovmax, jmax)) in enumerate(zip(image_ids, best)):
            if ovmax > thresh / 100.0:
                if not class_truth[image_id][1][jmax]:
                    if not found[image_id][jmax]:
                        tp[d] = 1.0
                        found[image_id][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        with np.errstate(divide="ignore", invalid="ignore"):  # a class without ground truth: nan, as detectron2
            rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[thresh] = voc_ap(rec, prec, use_07_metric)
        if thresh == 50:
            curve = (rec, prec)
    return aps, curve


def _voc_images(predictions, truth, score_thresh):
    """
    confusion_matrix's input per image: the detection lines of every class scoring at least `score_thresh`
    (the others would be left out anyway) against the image's ground truth.
    """
    per_image = defaultdict(lambda: ([], [], []))  # image id -> classes, scores, boxes
    for cls_id, lines in predictions.items():
        image_ids, scores, boxes = _parse_lines(lines)
        for image_id, score, box in zip(image_ids, scores, boxes):
            if score < score_thresh:
                continue
            per_image[image_id][0].append(cls_id)
            per_image[image_id][1].append(score)
            per_image[image_id][2].append(box)
    for image_id, (gt_boxes, gt_classes, difficult) in truth.items():
        classes, scores, boxes = per_image.get(image_id, ([], [], []))
        boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        yield {"pred_classes": classes, "pred_scores": scores, "gt_classes": gt_classes, "gt_ignore": difficult,
               "ious": voc_iou(boxes, gt_boxes)}


class COCOEvaluatorWithConvention(COCOEvaluator):
    """
    COCOEvaluator writing results in DATASETS.BOX_CONVENTION, and scoring only the images that were
    evaluated: with DATALOADER.SKIP_BAD_IMAGES, images left out of the test set are left out of the
    ground truth too, instead of counting as missed (with every image evaluated, the metric is unchanged).
    With `report_dir`, the evaluation report is written there, from pycocotools' own precision array.
    """

    def __init__(self, dataset_name, box_convention="detectron2", report_dir=None, report_score_thresh=0.3,
                 nms_thresh=None, score_thresh=None, records=True, **kwargs):
        super().__init__(dataset_name, **kwargs)
        self._dataset_name = dataset_name
        self._box_convention = box_convention
        self._report_dir = report_dir
        self._report_score_thresh = report_score_thresh
        self._nms_thresh, self._score_thresh = nms_thresh, score_thresh
        self._records = ImageRecords("COCO")
        self._with_records = bool(report_dir) and records
        self._gathered = None
        # pycocotools' COCOeval reads `iscrowd` and `area` of every ground-truth annotation, which the format
        # (and our reader, hence training) lets a file leave out: filled in as COCO defines them.
        for ann in self._coco_api.dataset.get("annotations", []):
            ann.setdefault("iscrowd", 0)
            if "area" not in ann and len(ann.get("bbox", ())) == 4:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])

    def reset(self):
        super().reset()
        self._records = ImageRecords("COCO")

    def process(self, inputs, outputs):
        outputs = _with_convention(outputs, self._box_convention)
        before = len(self._predictions)
        super().process(inputs, outputs)
        if not self._with_records:
            return
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        contiguous = (lambda c: c)  # the json's ids are contiguous until _eval_predictions maps them back
        for x, output, prediction in zip(inputs, outputs, self._predictions[before:]):
            gt = []
            for ann in self._coco_api.imgToAnns.get(x["image_id"], []):
                if mapping is not None and ann["category_id"] not in mapping:
                    continue
                (bx, by, bw, bh), cls = ann["bbox"], mapping[ann["category_id"]] if mapping else ann["category_id"]
                gt.append([cls, bx, by, bx + bw, by + bh, int(bool(ann.get("iscrowd", 0))), float(ann["area"])])
            removed = output.get(REMOVED_CANDIDATES)
            if removed is not None:
                removed = removed.to(self._cpu_device)
                near = near_an_object("COCO", removed.pred_boxes.tensor.numpy(), removed.pred_classes.numpy(), gt)
                removed = removed[torch.from_numpy(near)]
                rows = coco_detection_rows(instances_to_coco_json(removed, x["image_id"]), contiguous)
                removed = [row + [k] for row, k in zip(rows, removed.kept_index.tolist())]
            self._records.add(x["image_id"], x.get("file_name"), gt,
                              coco_detection_rows(prediction.get("instances", []), contiguous), removed)

    def evaluate(self, img_ids=None):
        self._gathered = self._records.gathered() if self._with_records else None  # on every process
        return super().evaluate(img_ids)

    def _eval_predictions(self, predictions, img_ids=None):
        if img_ids is None:
            img_ids = sorted({p["image_id"] for p in predictions})
        self._bbox_eval = None
        super()._eval_predictions(predictions, img_ids=img_ids)
        if self._report_dir and "bbox" in self._results:
            self._write_report(self._bbox_eval, img_ids)
        if self._with_records and "bbox" in self._results:
            images, removed_recorded = self._gathered
            header = _records_header(self._dataset_name, "COCO", self._box_convention, self._nms_thresh,
                                     self._score_thresh, removed_recorded)
            write_records(self._report_dir, header, images)
            write_alignment_report(self._report_dir, {**header, "images": images}, self._results["bbox"])

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if iou_type == "bbox":
            self._bbox_eval = coco_eval  # None when the model predicted nothing
        return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)

    def _write_report(self, coco_eval, img_ids):
        """
        Per-class AP, AP50, AP75 and the curves at IoU 0.5 from eval["precision"] [IoU, recall, class, area,
        max detections] over all areas at the last max-detections (100), the entries detectron2's per-category
        AP and pycocotools' headline AP average (-1 marks a class without ground truth).
        """
        names = list(self._metadata.thing_classes)
        gt = self._coco_api
        cat_ids = sorted(gt.getCatIds())
        iou_thresholds = np.linspace(0.5, 0.95, 10)  # pycocotools' iouThrs
        if coco_eval is None:  # no prediction at all: every metric is NaN, as detectron2 reports it
            precision = np.full((len(iou_thresholds), len(RECALL_GRID), len(cat_ids)), -1.0)
        else:
            precision = coco_eval.eval["precision"][:, :, :, 0, -1]
            cat_ids, iou_thresholds = list(coco_eval.params.catIds), coco_eval.params.iouThrs
        # A class has ground truth at every IoU and recall, or at none: a plain mean per class is the metric's.
        valid = np.where(precision > -1, precision, np.nan)
        at_iou = {iou: valid[int(np.argmin(np.abs(iou_thresholds - iou)))] for iou in (0.5, 0.75)}
        ap = {"AP": valid.mean(axis=(0, 1)) * 100, "AP50": at_iou[0.5].mean(axis=0) * 100,
              "AP75": at_iou[0.75].mean(axis=0) * 100}
        truth = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=img_ids)) if not _coco_ignored(a)]
        contiguous = {cat_id: k for k, cat_id in enumerate(cat_ids)}
        counts = np.bincount([contiguous[a["category_id"]] for a in truth], minlength=len(cat_ids))
        results = ClassResults(
            names=names, ap=ap, num_ground_truth=counts,
            precision=at_iou[0.5].T, mean_over="defined",
            metric="COCO metric (pycocotools, 101-point AP, 100 detections per image)",
        )
        dt = coco_eval.cocoDt if coco_eval is not None else None
        confusion = confusion_matrix(_coco_images(gt, dt, img_ids, contiguous, self._report_score_thresh),
                                     len(cat_ids), 0.5, self._report_score_thresh)
        best_f1, per_class = best_f1_thresholds(_coco_images(gt, dt, img_ids, contiguous, F1_SCORE_FLOOR), len(cat_ids))
        write_evaluation_report(self._report_dir, self._dataset_name, results, confusion, self._report_score_thresh,
                                best_f1=best_f1, best_f1_per_class=per_class)


def _coco_ignored(ann):
    """A ground truth pycocotools neither counts nor penalises over all areas: a crowd (its COCOeval.evaluate
    sets `ignore` to `iscrowd`, whatever the file says)."""
    return bool(ann.get("iscrowd", 0))


def _coco_images(gt, dt, img_ids, contiguous, score_thresh):
    """
    confusion_matrix's input per image: the detections scoring at least `score_thresh`, with the IoU
    pycocotools measures (crowd boxes: over the detection); `contiguous` maps the json's category ids to class
    indices.
    """
    for img_id in img_ids:
        gts = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[img_id])) if a["category_id"] in contiguous]
        dts = dt.loadAnns(dt.getAnnIds(imgIds=[img_id])) if dt is not None else []
        dts = [d for d in dts if d["score"] >= score_thresh]
        ious = mask_util.iou([d["bbox"] for d in dts], [g["bbox"] for g in gts], [_coco_ignored(g) for g in gts])
        yield {
            "pred_classes": [contiguous[d["category_id"]] for d in dts],
            "pred_scores": [d["score"] for d in dts],
            "gt_classes": [contiguous[g["category_id"]] for g in gts],
            "gt_ignore": [_coco_ignored(g) for g in gts],
            "ious": np.asarray(ious, dtype=np.float64).reshape(len(dts), len(gts)),
        }
