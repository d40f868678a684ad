#!/usr/bin/env python
"""
`make demo`: the whole pipeline on a dataset the project writes itself, on the CPU, in about ten minutes.

1. writes the "shapes" dataset (circles, squares, triangles on varied backgrounds) in COCO-json layout;
2. declares it through DATASETS.CUSTOM, exactly as a user declares their own data;
3. trains a small Mutual Guidance detector (configs/demo_shapes.yaml) with train_net.py's Trainer;
4. evaluates it with Detectron2's COCOEvaluator (per-class table, precision-recall curves and confusion
   matrix in <output-dir>/eval/shapes_test/) and draws the test images with the Visualizer;
5. prints the metrics table and where everything is.
"""
import argparse
import glob
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.evaluation import print_csv_format  # noqa: E402

from mutual_guide.data import make_synthetic_dataset  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yaml")
VIS_PERIOD = 450


def dataset_opts(info, extra=None):
    """Config overrides declaring the generated dataset as a user's COCO-json data would be declared."""
    custom = info["custom_specs"]  # "shapes_train:coco:json=...;images=..." and "shapes_test:..."
    train = ["shapes_train"]
    if extra is not None:  # only its training split: the test set stays the one `info` holds
        custom = custom + extra["custom_specs"][:1]
        train.append(extra["custom_specs"][0].split(":")[0])
    return [
        "DATASETS.CUSTOM", str(custom),
        "DATASETS.TRAIN", str(tuple(train)),
        "DATASETS.TEST", "('shapes_test',)",
        "MODEL.MUTUAL_GUIDE.NUM_CLASSES", str(len(info["classes"])),
    ]


def run(output_dir, num_train, num_test, opts=(), seed=0, image_size=128, num_extra_train=0):
    """Generate, train, evaluate, draw. Returns the evaluation results (COCO-style dict)."""
    import demo
    import train_net

    started = time.time()
    info = make_synthetic_dataset(
        os.path.join(output_dir, "shapes"), fmt="coco", num_train=num_train, num_test=num_test,
        image_size=image_size, seed=seed, name="shapes",
    )
    print(f"[demo] dataset written to {info['root']} ({num_train} train / {num_test} test images, "
          f"classes {', '.join(info['classes'])})", flush=True)
    extra = None
    if num_extra_train > 0:
        # More images of the same kind from another seed, for training only: the test set above does not change
        # (the generator draws the training images before the test ones, from one random stream).
        extra = make_synthetic_dataset(
            os.path.join(output_dir, "shapes_extra"), fmt="coco", num_train=num_extra_train, num_test=0,
            image_size=image_size, seed=seed + 1, name="shapes_extra",
        )
        print(f"[demo] {num_extra_train} more training images in {extra['root']}", flush=True)

    # A demo run replaces the previous demo's files in its folder (train_net refuses that without the flag).
    # VIS_PERIOD for the training run only: the training images with the anchors each task trains on, in
    # TensorBoard at the first iteration and half-way (the tests that train from this config draw nothing).
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "--overwrite-output-dir", "OUTPUT_DIR", output_dir, "VIS_PERIOD", str(VIS_PERIOD)]
        + dataset_opts(info, extra) + list(opts)
    )
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    print(f"[demo] trained {cfg.SOLVER.MAX_ITER} iterations in {time.time() - started:.0f} s", flush=True)

    # Evaluate the final checkpoint as a user would: --eval-only with its weights (BatchNorm folded).
    final = os.path.join(output_dir, "model_final.pth")
    eval_args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", "OUTPUT_DIR", output_dir, "MODEL.WEIGHTS", final]
        + dataset_opts(info, extra) + list(opts)
    )
    results = train_net.main(eval_args)

    draw_dir = os.path.join(output_dir, "draw")
    demo.main([
        "--config-file", CONFIG, "--input", os.path.join(info["splits"]["test"]["image_root"], "test_*.jpg"), "--output", draw_dir,
        # the previous demo's drawings are replaced; the threshold is the evaluation's best F1 (demo.py's default)
        "--overwrite",
        "--opts", "MODEL.WEIGHTS", final, "OUTPUT_DIR", output_dir, *dataset_opts(info, extra), *opts,
    ])
    if comm.is_main_process():
        print("\n[demo] evaluation of", final, "on shapes_test:")
        print_csv_format(results)
        drawn = sorted(glob.glob(os.path.join(draw_dir, "*.jpg")))
        print(f"[demo] {len(drawn)} drawings in {draw_dir} (e.g. {drawn[0] if drawn else '-'})")
        report = [os.path.join(output_dir, "eval", "shapes_test", f)
                  for f in ("per_class.json", "pr_curve.png", "confusion_matrix.png")]
        print(f"[demo] per-class AP, precision-recall curves and confusion matrix of the test set: {', '.join(report)}")
        print(f"[demo] metrics.json, TensorBoard events (training images with the anchors each task trains on: "
              f"tensorboard --logdir {output_dir}) and checkpoints in {output_dir}")
        print(f"[demo] total time {time.time() - started:.0f} s")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-test", type=int, default=60)
    parser.add_argument("--num-extra-train", type=int, default=1600,
                        help="training images generated beside --num-train, from another seed (the test set is kept)")
    parser.add_argument("--min-ap50", type=float, default=75.0, help="fail when the test AP50 is below this")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    results = run(args.output_dir, args.num_train, args.num_test, args.opts, num_extra_train=args.num_extra_train)
    ap50 = results["bbox"]["AP50"]
    if ap50 < args.min_ap50:
        print(f"[demo] AP50 {ap50:.1f} is below {args.min_ap50}: the detector did not learn enough", flush=True)
        return 1
    print(f"[demo] AP50 {ap50:.1f} (>= {args.min_ap50}): the detector works", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
