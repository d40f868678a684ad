"""The evaluator of a dataset, chosen by its metadata's `evaluator_type`."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from mutual_guide.evaluation.drawer import PredictionDrawer
from mutual_guide.evaluation.evaluators import COCOEvaluatorWithConvention, VOCEvaluator

__all__ = ["build_dataset_evaluator"]


def build_dataset_evaluator(cfg, dataset_name, output_folder=None, records=True):
    """
    The evaluator the dataset's `evaluator_type` asks for: "pascal_voc" (detectron2's VOC metric, AP over IoU
    .50:.95, AP50, AP75, the 11-point metric for 2007 data, with the ground truth of our VOC reader) or "coco"
    (detectron2's COCOEvaluator), both writing predictions in DATASETS.BOX_CONVENTION. Each evaluation also
    leaves its per-class table, precision-recall curves and confusion matrix (at TEST.DRAW_SCORE_THRESH), its
    per-image records and alignment report (records.py, alignment.py) in OUTPUT_DIR/eval/<dataset>/ (the latest
    evaluation replaces the previous one's).
    With TEST.DRAW, predictions are also drawn into OUTPUT_DIR/draw/<dataset>/. `records` False leaves out the
    records and the alignment report (benchmarks/bench_evaluation_records.py measures their cost).
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    convention = cfg.DATASETS.BOX_CONVENTION
    # the model's NMS and score thresholds, written in the records
    test = cfg.MODEL.RETINANET if cfg.MODEL.META_ARCHITECTURE == "MutualGuideRetinaNet" else cfg.MODEL.MUTUAL_GUIDE
    report = {"report_dir": os.path.join(cfg.OUTPUT_DIR, "eval", dataset_name),
              "report_score_thresh": cfg.TEST.DRAW_SCORE_THRESH,
              "nms_thresh": test.NMS_THRESH_TEST, "score_thresh": test.SCORE_THRESH_TEST, "records": records}
    if evaluator_type == "pascal_voc":
        evaluator = VOCEvaluator(dataset_name, convention, skip_bad_images=cfg.DATALOADER.SKIP_BAD_IMAGES, **report)
    elif evaluator_type == "coco":
        evaluator = COCOEvaluatorWithConvention(dataset_name, convention, tasks=("bbox",), output_dir=output_folder,
                                                **report)
    else:
        raise ValueError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; expected 'pascal_voc' or 'coco' "
            "(set it with MetadataCatalog.get(name).evaluator_type)"
        )
    if not cfg.TEST.DRAW:
        return evaluator
    drawer = PredictionDrawer(
        dataset_name, os.path.join(cfg.OUTPUT_DIR, "draw", dataset_name), cfg.TEST.DRAW_SCORE_THRESH
    )
    return DatasetEvaluators([evaluator, drawer])
