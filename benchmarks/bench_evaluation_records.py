#!/usr/bin/env python
"""
What the per-image records and the alignment report add to an evaluation, side by side in one run.

Both sides run `Trainer.test` (data loading, inference, the evaluator and its report, as `--eval-only` does):

plain:   the model's inference as deployed (no removed candidates), the evaluator with its report
         (per_class.json, pr_curve.png, confusion_matrix.png) but without records;
records: as every evaluation runs: the model gives its removed candidates, the evaluator also writes
         per_image.json.gz, alignment.json and alignment.png.

The model is the `make demo` detector (configs/demo_shapes.yaml, or --config-file) with --weights (random weights
when none: an untrained head keeps every candidate, the worst case for NMS), on a generated shapes test set of
--images images (60: the demo's) in COCO or VOC layout. The sides take turns, --repeats passes each; prints the
best time of each and the ratio records / plain.

    .venv/bin/python benchmarks/bench_evaluation_records.py [--weights output/demo/model_final.pth] [--format voc]
"""
import argparse
import contextlib
import functools
import os
import sys
import tempfile
import time
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_net  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

from mutual_guide.data import make_synthetic_dataset  # noqa: E402
from mutual_guide.engine import trainer as trainer_module  # noqa: E402
from mutual_guide.evaluation import build_dataset_evaluator  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "demo_shapes.yaml"))
    parser.add_argument("--weights", default="", help="a checkpoint of the config's model (random weights if none)")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--format", choices=("coco", "voc"), default="coco")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench_records_")
    info = make_synthetic_dataset(os.path.join(workdir, "data"), fmt=args.format, num_train=1,
                                  num_test=args.images, image_size=128, seed=0, name="benchrec")
    argv = ["--config-file", args.config_file, "OUTPUT_DIR", os.path.join(workdir, "out"),
            "DATASETS.CUSTOM", str(info["custom_specs"]), "DATASETS.TRAIN", "('benchrec_train',)",
            "DATASETS.TEST", "('benchrec_test',)", "MODEL.MUTUAL_GUIDE.NUM_CLASSES", str(len(info["classes"])),
            "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
    cfg = train_net.setup(train_net.argument_parser().parse_args(argv))
    model = train_net.Trainer.build_model(cfg).eval()
    if args.weights:
        DetectionCheckpointer(model).load(args.weights)

    def side(with_records):
        patches = contextlib.ExitStack()
        if not with_records:
            patches.enter_context(mock.patch.object(trainer_module, "removed_candidates_recorded",
                                                    lambda model: contextlib.nullcontext()))
            patches.enter_context(mock.patch.object(trainer_module, "build_dataset_evaluator",
                                                    functools.partial(build_dataset_evaluator, records=False)))
        with patches:
            started = time.perf_counter()
            train_net.Trainer.test(cfg, model)
            return time.perf_counter() - started

    side(False), side(True)  # warm-up
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for with_records in (False, True):
            times[with_records].append(side(with_records))
    best = {k: min(v) for k, v in times.items()}
    size = os.path.getsize(os.path.join(workdir, "out", "eval", "benchrec_test", "per_image.json.gz"))
    print(f"{args.images} test images ({args.format}), {os.path.basename(args.config_file)}, weights "
          f"{args.weights or 'random'}; Trainer.test, best of {args.repeats}: plain {best[False]:.2f} s, records "
          f"{best[True]:.2f} s; ratio records / plain {best[True] / best[False]:.3f}, added "
          f"{best[True] - best[False]:.2f} s; per_image.json.gz {size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
