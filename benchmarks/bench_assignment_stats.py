"""
What MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD costs when on: the assignment statistics of one step
(mutual_guide/modeling/assignment_stats.py) against the step's assignment itself, on the same labelled batch
(batch 32, 320 x 320, 80 classes, 5-10 boxes per image, as bench_assignment.py). Off, nothing is computed.

    .venv/bin/python benchmarks/bench_assignment_stats.py [--batch 32] [--repeats 5]
"""
import argparse

import torch
from bench_assignment import best_time, make_inputs

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from mutual_guide.modeling.assignment import build_anchor_matcher, pad_ground_truth
from mutual_guide.modeling.assignment_stats import assignment_statistics


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5, help="each side keeps its best of these")
    args = parser.parse_args()
    anchors, boxes, classes, deltas, logits = make_inputs(args.batch, args.size, args.classes)
    n, a = deltas.shape[:2]
    pred_boxes = Box2BoxTransform((10.0, 10.0, 5.0, 5.0)).apply_deltas(deltas.reshape(-1, 4), anchors.repeat(n, 1))
    pred_boxes = pred_boxes.view(n, a, 4)
    gt_boxes, gt_classes, valid = pad_ground_truth(
        [Instances((args.size, args.size), gt_boxes=Boxes(b), gt_classes=c) for b, c in zip(boxes, classes)]
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {n}, {a} anchors, "
          f"{args.classes} classes, {int(valid.sum())} boxes")
    for mutual in (True, False):
        matcher = build_anchor_matcher(mutual, (0.4, 0.5), args.classes)
        t_assign, labels = best_time(
            lambda: matcher(anchors, gt_boxes, gt_classes, valid, pred_boxes, logits), args.repeats)
        t_stats, _ = best_time(lambda: assignment_statistics(labels, gt_boxes, valid, args.classes), args.repeats)
        name = "mutual guidance" if mutual else "IoU baseline"
        print(f"{name}: assignment {t_assign * 1e3:.1f} ms, its statistics {t_stats * 1e3:.2f} ms "
              f"({t_stats / t_assign:.1%} of the assignment)")


if __name__ == "__main__":
    main()
