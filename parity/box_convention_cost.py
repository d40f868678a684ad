#!/usr/bin/env python
"""
What the authors' VOC convention (DATASETS.BOX_CONVENTION paper) costs: one trained model, one inference pass,
its detections scored by the project's VOC evaluator twice, as the detectron2 convention writes them and moved by
+1 pixel on all four coordinates, which is what the authors' evaluation at fd2c4cc does to every detection
(data/voc0712.py trains on the XML's numbers, data/voc_eval.py writes each detection +1 and scores it against
the XML). Training twice instead would bury a one-pixel effect under run-to-run noise.

    .venv/bin/python parity/box_convention_cost.py --config-file configs/demo_shapes.yaml \\
        --dataset mydata_test MODEL.WEIGHTS output/run/model_final.pth DATASETS.CUSTOM '[...]' ...

The dataset must have VOC layout (the shift is the VOC evaluation's); the config must train in the detectron2
convention (the default).
"""
import argparse
import os
import sys
import tempfile

import torch

from detectron2.structures import Boxes

from mutual_guide.checkpoint import MutualGuideCheckpointer
from mutual_guide.engine import Trainer, argument_parser, setup
from mutual_guide.evaluation import VOCEvaluator

SHIFTS = {"detectron2 (as trained)": (0.0, 0.0, 0.0, 0.0), "paper (+1 on all four)": (1.0, 1.0, 1.0, 1.0)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True, help="a registered or DATASETS.CUSTOM dataset of VOC layout")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..., MODEL.WEIGHTS among them")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        cfg = setup(argument_parser().parse_args(
            ["--config-file", args.config_file, "--eval-only", *args.opts, "OUTPUT_DIR", out,
             "DATASETS.TEST", f"('{args.dataset}',)"]))
        if cfg.DATASETS.BOX_CONVENTION != "detectron2":
            parser.error("train and score in DATASETS.BOX_CONVENTION detectron2; this script adds the authors' shift")
        model = Trainer.build_model(cfg)
        MutualGuideCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        model.eval()
        evaluators = {name: VOCEvaluator(args.dataset) for name in SHIFTS}
        for evaluator in evaluators.values():
            evaluator.reset()
        with torch.no_grad():
            for inputs in Trainer.build_test_loader(cfg, args.dataset):
                outputs = [o["instances"].to("cpu") for o in model(inputs)]
                for name, evaluator in evaluators.items():
                    shift = torch.tensor(SHIFTS[name])
                    moved = []
                    for instances in outputs:
                        instances = instances[:]  # a copy of the fields' list: the boxes are replaced, not edited
                        instances.pred_boxes = Boxes(instances.pred_boxes.tensor + shift)
                        moved.append({"instances": instances})
                    evaluator.process(inputs, moved)
        results = {name: evaluator.evaluate()["bbox"] for name, evaluator in evaluators.items()}
    print(f"{'scored as':<26} {'AP':>6} {'AP50':>6} {'AP75':>6}   ({os.path.basename(cfg.MODEL.WEIGHTS)} on {args.dataset})")
    for name, r in results.items():
        print(f"{name:<26} {r['AP']:6.2f} {r['AP50']:6.2f} {r['AP75']:6.2f}")
    base, paper = results.values()
    print(f"{'difference':<26} {paper['AP'] - base['AP']:+6.2f} {paper['AP50'] - base['AP50']:+6.2f} "
          f"{paper['AP75'] - base['AP75']:+6.2f}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
