"""
DATASETS.BOX_CONVENTION: which pixel convention the ground truth is trained and evaluated in. The readers
always give detectron2's; `to_box_convention` converts the training records and `evaluation_boxes` the
predictions handed to the evaluators, so that training and evaluation cannot disagree.

"detectron2" (the default, in every config): VOC boxes are (xmin - 1, ymin - 1, xmax, ymax) of the XML and the VOC evaluation adds
1 to xmin/ymin of the detections; COCO boxes are (x, y, x + w, y + h) and the results have w = x2 - x1.

"paper" (the authors' code, zhanghengdev/MutualGuide at fd2c4cc; "seed" is accepted as an older name of it), only
for reproducing the authors' VOC and COCO tables to the last digit:
- VOC (data/voc0712.py): trains on the XML coordinates as they are (no shift), and writes detections with
  +1 on all four coordinates for its evaluation (data/voc_eval.py, which reads the XML as it is and measures
  IoU with "+1" areas, as detectron2's evaluator does).
- COCO (data/coco.py): x1 = max(0, x), y1 = max(0, y), x2 = min(W - 1, x1 + max(0, w - 1)), likewise y2
  (inclusive corners); a box is trained only if its `area` field is positive and x2 - x1 > 6 and y2 - y1 > 6;
  results are written with w = x2 - x1 + 1.
In both formats the authors' evaluation is detectron2's with the detections' x2 and y2 moved by +1. On VOC that
scores every detection one pixel down and right of what the network predicted: harmless for large objects at
IoU 0.5, several AP on small objects and at IoU 0.75 (docs/datasets.md, "Box convention", has the figures).
"""
import logging

import torch

from detectron2.structures import BoxMode

__all__ = ["BOX_CONVENTIONS", "check_box_convention", "evaluation_boxes", "to_box_convention"]

BOX_CONVENTIONS = ("detectron2", "paper")
_OLD_NAMES = {"seed": "paper"}  # accepted in configs written before the value was renamed
_PAPER_MIN_SIDE = 6  # data/coco.py at fd2c4cc keeps a box when x2 - x1 > 6 and y2 - y1 > 6

logger = logging.getLogger(__name__)


def check_box_convention(value):
    """The convention's name (an older name resolved); ValueError naming the key unless it is one of BOX_CONVENTIONS."""
    if value in _OLD_NAMES:
        return _OLD_NAMES[value]
    if value not in BOX_CONVENTIONS:
        raise ValueError(f"DATASETS.BOX_CONVENTION must be one of {BOX_CONVENTIONS}, got {value!r}")
    return value


def to_box_convention(records, convention, dataset_format, name=""):
    """
    Training records (detectron2's convention, as the readers give them) in `convention`. `dataset_format` is
    the dataset's evaluator_type: "pascal_voc" or "coco". The input records are not modified.
    """
    if check_box_convention(convention) == "detectron2":
        return records
    if dataset_format not in ("pascal_voc", "coco"):
        raise ValueError(
            f"DATASETS.BOX_CONVENTION {convention!r} is defined for VOC and COCO datasets; dataset {name!r} has "
            f"evaluator_type {dataset_format!r}. Set DATASETS.BOX_CONVENTION detectron2."
        )
    convert = _paper_voc if dataset_format == "pascal_voc" else _paper_coco
    out, dropped = [], 0
    for record in records:
        annotations = []
        for ann in record.get("annotations", []):
            box = convert(ann, record["width"], record["height"])
            if box is None:
                dropped += 1
                continue
            annotations.append({**ann, "bbox": box, "bbox_mode": BoxMode.XYXY_ABS})
        out.append({**record, "annotations": annotations})
    if dropped:
        logger.info(f"Dataset {name!r}: {dropped} box(es) under the authors' COCO size rule left out of training")
    return out


def _paper_voc(ann, width, height):
    x0, y0, x1, y1 = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
    return [x0 + 1.0, y0 + 1.0, x1, y1]  # back to the XML's numbers


def _paper_coco(ann, width, height):
    x, y, w, h = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYWH_ABS)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    area = ann.get("area", w * h)  # the authors' loader reads the json's area; files without it use the box's
    if area > 0 and x2 - x1 > _PAPER_MIN_SIDE and y2 - y1 > _PAPER_MIN_SIDE:
        return [x1, y1, x2, y2]
    return None


def evaluation_boxes(boxes: torch.Tensor, convention) -> torch.Tensor:
    """Predicted XYXY boxes as detectron2's VOC/COCO result writers must receive them in `convention`."""
    if check_box_convention(convention) == "detectron2":
        return boxes
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
