#!/usr/bin/env python
"""
One checkpoint, two precisions: how far the detections under bfloat16 (or float16) autocast are from float32.

The model is built once (BatchNorm folded, as MutualGuidePredictor and --eval-only run it) and every test image
goes through it twice, in float32 and under autocast to --precision; the postprocessing runs in float32 both times.
Per image, each of the --topk best float32 detections is matched to the low-precision detection of the same class
that overlaps it most; it counts as found when that IoU is >= --iou. Printed: the share found, the largest box
coordinate difference (pixels of the original image) and score difference among the matched, and, over every
anchor of MutualGuideDetector, the largest difference of the sigmoid scores and of the decoded boxes.

    .venv/bin/python tools/compare_precisions.py --config-file configs/demo_shapes.yaml \
        MODEL.WEIGHTS output/demo/model_final.pth DATASETS.CUSTOM '[...]' DATASETS.TEST '("shapes_test",)'
"""
import argparse
import os
import sys

import torch

from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mutual_guide.checkpoint.checkpointer import MutualGuideCheckpointer  # noqa: E402
from mutual_guide.config import add_mutual_guide_config  # noqa: E402
from mutual_guide.data import build_dataset_mapper, register_custom_datasets  # noqa: E402
from mutual_guide.data.loading import test_dataset_dicts  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--dataset", default="", help="a registered dataset; default: DATASETS.TEST[0]")
    parser.add_argument("--images", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--topk", type=int, default=20, help="float32 detections compared per image")
    parser.add_argument("--iou", type=float, default=0.9, help="IoU at which a detection counts as the same")
    parser.add_argument("--min-score", type=float, default=0.0, help="compare only float32 detections scoring this")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def match_detections(reference, other, topk, iou_thresh, min_score=0.0):
    """
    (found, compared, box differences, score differences) of the `topk` best `reference` detections (Instances,
    sorted by score) scoring at least `min_score`, against `other`: each to the same-class detection of `other` it
    overlaps most.
    """
    ref = reference[:topk]
    ref = ref[ref.scores >= min_score]
    if len(ref) == 0:
        return 0, 0, [], []
    if len(other) == 0:
        return 0, len(ref), [], []
    iou = pairwise_iou(ref.pred_boxes, other.pred_boxes)
    iou[ref.pred_classes[:, None] != other.pred_classes[None, :]] = -1
    best, index = iou.max(dim=1)
    found = best >= iou_thresh
    box_diff = (ref.pred_boxes.tensor[found] - other.pred_boxes.tensor[index[found]]).abs().amax(dim=1)
    score_diff = (ref.scores[found] - other.scores[index[found]]).abs()
    return int(found.sum()), len(ref), box_diff.tolist(), score_diff.tolist()


def dense_differences(model, inputs, dtype):
    """Largest |score| and |box| difference over every anchor and class (MutualGuideDetector), or None."""
    if not hasattr(model, "predict"):
        return None
    images = model.preprocess_image(inputs).tensor
    outputs = {}
    for name, enabled in (("float32", False), ("low", True)):
        with torch.autocast("cpu", dtype=dtype, enabled=enabled):
            logits, deltas = model.predict(images)
        outputs[name] = (logits.float().sigmoid(), model.decode_boxes(deltas.float()))
    (s32, b32), (slo, blo) = outputs["float32"], outputs["low"]
    return float((s32 - slo).abs().max()), float((b32 - blo).abs().max())


@torch.no_grad()
def compare(cfg, dataset, dtype, images=0, topk=20, iou=0.9, min_score=0.0):
    model = build_model(cfg)
    MutualGuideCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    if cfg.MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE:
        model.fuse_for_inference()
    model.eval()
    dicts = test_dataset_dicts(cfg, dataset)
    if images > 0:
        dicts = dicts[:images]
    loader = build_detection_test_loader(dicts, mapper=build_dataset_mapper(cfg, is_train=False), num_workers=0)
    device = torch.device(cfg.MODEL.DEVICE).type
    totals = {"found": 0, "compared": 0, "box": [], "score": [], "dense_score": 0.0, "dense_box": 0.0, "n": 0}
    for inputs in loader:
        reference = model(inputs)[0]["instances"].to("cpu")
        with torch.autocast(device, dtype=dtype):
            other = model(inputs)[0]["instances"].to("cpu")
        found, compared, box, score = match_detections(reference, other, topk, iou, min_score)
        totals["found"] += found
        totals["compared"] += compared
        totals["box"] += box
        totals["score"] += score
        totals["n"] += 1
        dense = dense_differences(model, inputs, dtype)
        if dense is not None:
            totals["dense_score"] = max(totals["dense_score"], dense[0])
            totals["dense_box"] = max(totals["dense_box"], dense[1])
    return totals


def main(argv=None):
    args = parse_args(argv)
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("MODEL.WEIGHTS: give the checkpoint to compare (MODEL.WEIGHTS path/to/model_final.pth)")
    register_custom_datasets(cfg)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "")
    if not dataset:
        raise SystemExit("--dataset or DATASETS.TEST: name the images to compare on")
    t = compare(cfg, dataset, DTYPES[args.precision], args.images, args.topk, args.iou, args.min_score)
    share = t["found"] / max(t["compared"], 1)
    print(f"{t['n']} images of {dataset}, float32 against {args.precision} autocast, top {args.topk} float32 "
          f"detections per image" + (f" scoring >= {args.min_score}" if args.min_score else "")
          + f", same class and IoU >= {args.iou}:")
    print(f"  found {t['found']} / {t['compared']} ({100 * share:.1f}%)")
    if t["box"]:
        print(f"  matched: largest box coordinate difference {max(t['box']):.3f} px (mean {sum(t['box']) / len(t['box']):.3f}), "
              f"largest score difference {max(t['score']):.4f} (mean {sum(t['score']) / len(t['score']):.4f})")
    if t["dense_score"] or t["dense_box"]:
        print(f"  every anchor: largest score difference {t['dense_score']:.4f}, largest decoded box difference "
              f"{t['dense_box']:.3f} px (network frame)")
    return t


if __name__ == "__main__":
    main()
