"""
detectron2's VOC and COCO evaluators, with the ground truth of VOC taken from our reader and the predictions
written in DATASETS.BOX_CONVENTION.

`VOCEvaluator` keeps PascalVOCDetectionEvaluator's metric exactly (its `process`, which writes each detection
as "id score x0 y0 x1 y1" with 3 and 1 decimals, its `voc_ap`, its matching: VOC07 11-point AP for year 2007
data and the area under the curve otherwise, AP over IoU .50:.95 in steps of .05, AP50, AP75, difficult objects
neither counted nor penalised). What differs is where the ground truth comes from: detectron2's `voc_eval`
re-reads every XML with int() and requires <pose> and <truncated>, so it rejects files our reader (and
therefore training) accepts; here the ground truth is the reader's records, the same ones training used.
"""
import logging
from collections import OrderedDict, defaultdict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_ap
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm

from .data.box_convention import evaluation_boxes
from .data.check import checked_records, read_by_our_readers
from .data.problems import DatasetError, format_problems
from .data.voc_reader import read_voc_dataset

__all__ = ["COCOEvaluatorWithConvention", "VOCEvaluator", "voc_ground_truth"]

_IOU_THRESHOLDS = range(50, 100, 5)


def _with_convention(outputs, convention):
    """`outputs` with every prediction box as the result writers must see it in `convention`."""
    if convention == "detectron2":
        return outputs
    converted = []
    for output in outputs:
        instances = output["instances"]
        shifted = Instances(instances.image_size, **instances.get_fields())
        shifted.pred_boxes = Boxes(evaluation_boxes(instances.pred_boxes.tensor, convention))
        converted.append({**output, "instances": shifted})
    return converted


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
    def __init__(self, dataset_name, box_convention="detectron2", skip_bad_images=False):
        # Not PascalVOCDetectionEvaluator.__init__: it prepares the XML re-reading that this class replaces.
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = meta.thing_classes
        self._is_2007 = meta.year == 2007
        self._box_convention = box_convention
        self._skip_bad_images = skip_bad_images
        self._cpu_device = torch.device("cpu")
        self._logger = logging.getLogger(__name__)

    def process(self, inputs, outputs):
        super().process(inputs, _with_convention(outputs, self._box_convention))

    def evaluate(self):
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
        truth = voc_ground_truth(self._ground_truth_records())
        aps = defaultdict(list)  # IoU threshold (percent) -> AP per class
        for cls_id in range(len(self._class_names)):
            for thresh, ap in voc_class_ap(predictions.get(cls_id, []), truth, cls_id, self._is_2007).items():
                aps[thresh].append(ap * 100)
        mean_ap = {iou: np.mean(x) for iou, x in aps.items()}
        return OrderedDict(bbox={"AP": np.mean(list(mean_ap.values())), "AP50": mean_ap[50], "AP75": mean_ap[75]})

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


def voc_class_ap(lines, truth, cls_id, use_07_metric):
    """
    {IoU threshold in percent: AP} of one class, as detectron2's voc_eval computes it at every threshold,
    from the detection lines written by PascalVOCDetectionEvaluator.process and the ground truth of
    `voc_ground_truth`. The IoU of each detection with its best ground truth does not depend on the threshold,
    so it is computed once; the matching (a ground truth is found once, difficult ones ignored) is redone
    per threshold, in the same order as detectron2's.
    """
    class_truth = {}
    npos = 0
    for image_id, (boxes, classes, difficult) in truth.items():
        keep = classes == cls_id
        class_truth[image_id] = (boxes[keep], difficult[keep])
        npos += int((~difficult[keep]).sum())

    split = [line.strip().rsplit(" ", 5) for line in lines]
    image_ids = [x[0] for x in split]
    confidence = np.array([float(x[1]) for x in split])
    detections = np.array([[float(z) for z in x[2:]] for x in split]).reshape(-1, 4)
    order = np.argsort(-confidence)  # the same (unstable) sort as detectron2's, so ties order the same
    detections = detections[order, :]
    image_ids = [image_ids[i] for i in order]

    best = []  # (best IoU, index of that ground truth) of each detection
    for image_id, bb in zip(image_ids, detections):
        gt, _ = class_truth[image_id]
        if gt.size == 0:
            best.append((-np.inf, -1))
            continue
        iw = np.maximum(np.minimum(gt[:, 2], bb[2]) - np.maximum(gt[:, 0], bb[0]) + 1.0, 0.0)
        ih = np.maximum(np.minimum(gt[:, 3], bb[3]) - np.maximum(gt[:, 1], bb[1]) + 1.0, 0.0)
        inters = iw * ih
        union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (gt[:, 2] - gt[:, 0] + 1.0) * (
            gt[:, 3] - gt[:, 1] + 1.0
        ) - inters
        overlaps = inters / union
        best.append((np.max(overlaps), int(np.argmax(overlaps))))

    aps = {}
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
    return aps


class COCOEvaluatorWithConvention(COCOEvaluator):
    """
    COCOEvaluator writing results in DATASETS.BOX_CONVENTION, and scoring only the images that were
    evaluated: with DATALOADER.SKIP_BAD_IMAGES, images left out of the test set are left out of the
    ground truth too, instead of counting as missed (with every image evaluated, the metric is unchanged).
    """

    def __init__(self, dataset_name, box_convention="detectron2", **kwargs):
        super().__init__(dataset_name, **kwargs)
        self._box_convention = box_convention
        # pycocotools' COCOeval reads `iscrowd` and `area` of every ground-truth annotation, which the format
        # (and our reader, hence training) lets a file leave out: filled in as COCO defines them.
        for ann in self._coco_api.dataset.get("annotations", []):
            ann.setdefault("iscrowd", 0)
            if "area" not in ann and len(ann.get("bbox", ())) == 4:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])

    def process(self, inputs, outputs):
        super().process(inputs, _with_convention(outputs, self._box_convention))

    def _eval_predictions(self, predictions, img_ids=None):
        if img_ids is None:
            img_ids = sorted({p["image_id"] for p in predictions})
        return super()._eval_predictions(predictions, img_ids=img_ids)
