"""
Does the per-level cap on candidates before NMS (TEST.TOPK_CANDIDATES) change the paper's results?

Trains a small detector (configs/demo_shapes.yaml: ShuffleNetV2-FPN, 128 x 128, mutual guidance) on the generated
dataset in VOC layout (mutual_guide.data.make_synthetic_dataset(fmt="voc")), or takes --weights of one, then
evaluates that one checkpoint with `train_net.py --eval-only` and Detectron2's PascalVOCDetectionEvaluator:

    TOPK_CANDIDATES 0      every (anchor, class) pair above the score threshold, as the paper's code
    TOPK_CANDIDATES 1000   the default, as detectron2's RetinaNet
    TOPK_CANDIDATES 100    a cap that is meant to bind, to show what a binding cap does

and prints the VOC figures side by side with the number of pairs above the score threshold per level.

    .venv/bin/python parity/check_topk_cap.py [--output-dir output/topk_cap] [--weights model_final.pth]
"""
import argparse
import os
import sys
import time

import torch

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.engine import Trainer, argument_parser, setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_net  # noqa: E402  (its main() is the --eval-only path measured here)

CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yaml")


def dataset_opts(info, output_dir):
    return [
        "OUTPUT_DIR", output_dir,
        "DATASETS.CUSTOM", str(info["custom_specs"]),
        "DATASETS.TRAIN", "('capvoc_train',)",
        "DATASETS.TEST", "('capvoc_test',)",
        "MODEL.MUTUAL_GUIDE.NUM_CLASSES", str(len(info["classes"])),
    ]


def add_fields_the_voc_evaluator_reads(root):
    """
    detectron2's PascalVOCDetectionEvaluator reads <pose> and <truncated> of every object, which
    make_synthetic_dataset(fmt="voc") does not write (real VOC files have them): add them, as in VOC files.
    """
    import glob
    import xml.etree.ElementTree as ET

    for path in glob.glob(os.path.join(root, "Annotations", "*.xml")):
        tree = ET.parse(path)
        changed = False
        for obj in tree.findall("object"):
            for tag, value in (("pose", "Unspecified"), ("truncated", "0")):
                if obj.find(tag) is None:
                    ET.SubElement(obj, tag).text = value
                    changed = True
        if changed:
            tree.write(path)


def candidates_per_level(cfg, weights, info):
    """Mean and largest number of (anchor, class) pairs above SCORE_THRESH_TEST per level and test image."""
    from detectron2.data import build_detection_test_loader
    from detectron2.modeling import build_model

    from mutual_guide.checkpoint.checkpointer import MutualGuideCheckpointer
    from mutual_guide.data import MutualGuideDatasetMapper

    model = build_model(cfg).eval()
    MutualGuideCheckpointer(model).load(weights)
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], mapper=MutualGuideDatasetMapper(cfg, False),
                                         batch_size=8)
    counts = []
    with torch.no_grad():
        for batch in loader:
            logits, _ = model.predict(model.preprocess_image(batch).tensor)
            above = logits.sigmoid() > model.test_score_thresh  # [N, A, C]
            per_level = torch.stack([a.flatten(1).sum(1) for a in above.split(model.num_anchors_per_level, 1)], 1)
            counts.append(per_level)
    counts = torch.cat(counts).float()
    pairs = [n * model.num_classes for n in model.num_anchors_per_level]
    return counts.mean(0).tolist(), counts.max(0).values.tolist(), pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "topk_cap"))
    parser.add_argument("--weights", help="a checkpoint trained on this dataset (skips training)")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--caps", type=int, nargs="+", default=[0, 1000, 100])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    info = make_synthetic_dataset(os.path.join(args.output_dir, "voc"), fmt="voc", num_train=args.num_train,
                                  num_test=args.num_test, image_size=128, seed=0, name="capvoc")
    add_fields_the_voc_evaluator_reads(info["root"])
    opts = dataset_opts(info, args.output_dir) + list(args.opts)
    weights = args.weights
    if not weights:
        started = time.time()
        cfg = setup(argument_parser().parse_args(["--config-file", CONFIG] + opts))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        weights = os.path.join(args.output_dir, "model_final.pth")
        print(f"[cap] trained {cfg.SOLVER.MAX_ITER} iterations in {time.time() - started:.0f} s", flush=True)

    rows = []
    for cap in args.caps:
        eval_opts = opts + ["MODEL.WEIGHTS", weights, "TEST.TOPK_CANDIDATES", str(cap)]
        started = time.time()
        results = train_net.main(argument_parser().parse_args(
            ["--config-file", CONFIG, "--eval-only"] + eval_opts
        ))["bbox"]
        rows.append((cap, results, time.time() - started))
    # as an evaluation: a training set-up would refuse OUTPUT_DIR, which now holds the run just trained
    cfg = setup(argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only"] + opts + ["MODEL.WEIGHTS", weights]
    ))
    mean, largest, pairs = candidates_per_level(cfg, weights, info)

    print(f"\n[cap] {weights} on capvoc_test ({args.num_test} images, VOC metric), pairs above the score "
          f"threshold per image and level: mean {[round(m, 1) for m in mean]}, largest {[int(x) for x in largest]} "
          f"(of {pairs})")
    print("| TEST.TOPK_CANDIDATES | AP | AP50 | AP75 | evaluation (s) |")
    print("|--:|--:|--:|--:|--:|")
    for cap, r, seconds in rows:
        name = f"{cap} (all, the paper)" if cap <= 0 else str(cap)
        print(f"| {name} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['AP75']:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
