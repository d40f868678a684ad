"""
Data-path speed, ours against the authors' code (zhanghengdev/MutualGuide at fd2c4cc), side by side in one run:

1. images per second of one worker: the authors' `cv2.imread` + `preproc` and our mapper (detectron2's reader,
   the augmentation, the tensor), on the same images, interleaved in rounds so that load from other processes
   falls on both alike;
2. end-to-end training iterations per second: `train_net.py` against the authors' loop (parity/paper_loop.py) on
   the same data, with 0, 1 and 2 data workers (ShuffleNetV2-FPN, mutual guidance, from scratch; the first
   iterations are left out of the timing). The two sides take turns, `--repeats` runs each, and each side keeps
   its best run: on a shared machine, the run least disturbed by other processes (single runs were seen to vary
   by 15%); the ratio of the two sides' medians is printed too.

    .venv/bin/python benchmarks/bench_data.py --paper-repo <checkout> --data datasets/trees [--size 320 --batch 8]

--paper-repo is a checkout of the authors' code (see parity/README.md). --data is a COCO-json folder
(annotations/train.json, images/), e.g. from tools/make_tree_tiles.py; without it the demo's generated shapes
are written to a temporary folder.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

import mutual_guide
from mutual_guide.data import MutualGuideDatasetMapper, make_synthetic_dataset, register_custom_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "parity"))  # the authors' loop and modules, as the parity checks run them
from paper_code import add_paper_repo_argument, import_paper  # noqa: E402
from paper_loop import PaperDataset, train_paper_loop  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_paper_repo_argument(parser)
    parser.add_argument("--data", default="", help="COCO-json folder; default: generated shapes")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=200, help="images per side for the per-worker rate")
    parser.add_argument("--iters", type=int, default=23, help="training iterations per run (3 untimed)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per side and worker count (best kept)")
    parser.add_argument("--skip-training", action="store_true")
    return parser.parse_args()


def load_dicts(data):
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.DATASETS.CUSTOM = [f"bench_train:coco:json={data}/annotations/train.json;images={data}/images"]
    register_custom_datasets(cfg)
    return DatasetCatalog.get("bench_train")


def per_worker_rate(args, dicts):
    data_augment = import_paper(args.paper_repo, "data.data_augment")
    paper = PaperDataset(dicts, data_augment.preproc(args.size))
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    # the paper's pixel mean, the zoom-out's fill
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-MutualGuide.yaml"))
    cfg.INPUT.SIZE = args.size
    ours = MutualGuideDatasetMapper(cfg, is_train=True)
    torch.set_num_threads(1)  # as in a loader worker
    spent = {"paper": 0.0, "ours": 0.0}
    for start in range(0, args.images, 20):  # rounds of 20 images each, the two sides alternating
        indices = [i % len(dicts) for i in range(start, start + 20)]
        t = time.perf_counter()
        for i in indices:
            paper[i]
        spent["paper"] += time.perf_counter() - t
        t = time.perf_counter()
        for i in indices:
            ours(dicts[i])
        spent["ours"] += time.perf_counter() - t
    rates = {k: args.images / v for k, v in spent.items()}
    print(f"one worker, {args.images} images of {dicts[0]['width']} x {dicts[0]['height']} to {args.size} x "
          f"{args.size}: the authors' preproc {rates['paper']:.1f} images/s, ours {rates['ours']:.1f} images/s "
          f"({rates['ours'] / rates['paper']:.2f}x)")


def ours_seconds_per_iteration(args, workers, out):
    spec = f"bench_train:coco:json={args.data}/annotations/train.json;images={args.data}/images"
    with open(os.path.join(args.data, "annotations", "train.json")) as f:
        num_classes = len(json.load(f)["categories"])
    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "ShuffleNetV2", "MODEL.NECK.NAME", "FPN",
        "MODEL.BACKBONE.PRETRAINED", "", "MODEL.MUTUAL_GUIDE.NUM_CLASSES", str(num_classes),
        "INPUT.SIZE", str(args.size), "DATASETS.CUSTOM", json.dumps([spec]), "DATASETS.TRAIN", "('bench_train',)",
        "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.MAX_ITER", str(args.iters),
        "SOLVER.WARMUP_ITERS", "5", "SOLVER.CHECKPOINT_PERIOD", str(10**9), "DATALOADER.NUM_WORKERS", str(workers),
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True", "OUTPUT_DIR", out,  # as train_paper_loop does
    ]
    done = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", "configs/Base-MutualGuide.yaml", *opts], cwd=ROOT,
        capture_output=True, text=True, check=True,
    )
    text = done.stdout + done.stderr
    # detectron2's IterationTimer: "Overall training speed: N iterations in H:MM:SS (X s / it)", first 3 left out
    return float(re.search(r"Overall training speed: .*\(([\d.]+) s / it\)", text).group(1))


def paper_seconds_per_iteration(args, workers, dicts):
    with open(os.path.join(args.data, "annotations", "train.json")) as f:
        num_classes = len(json.load(f)["categories"])
    stamps = []
    train_paper_loop(args.paper_repo, dicts, size=args.size, num_classes=num_classes, backbone="ShuffleNetV2",
                     neck="FPN", mutual_guide=True, base_lr=0.0025, warm_iter=5, max_iter=args.iters,
                     batch=args.batch, workers=workers, seed=0, log_every=10**9,
                     on_step=lambda i: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[2]) / (len(stamps) - 3)


def main():
    args = parse_args()
    if not args.data:
        args.data = tempfile.mkdtemp(prefix="bench_data_")
        make_synthetic_dataset(args.data, "coco", num_train=200, num_test=1, image_size=args.size, seed=0)
    args.data = os.path.abspath(args.data)
    dicts = load_dicts(args.data)
    per_worker_rate(args, dicts)
    if args.skip_training:
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for workers in args.workers:
        paper_runs, ours_runs = [], []
        for _ in range(args.repeats):
            paper_runs.append(paper_seconds_per_iteration(args, workers, dicts))
            ours_runs.append(ours_seconds_per_iteration(args, workers, tempfile.mkdtemp(prefix="bench_data_out_")))
        paper, ours = min(paper_runs), min(ours_runs)
        median = statistics.median(paper_runs) / statistics.median(ours_runs)
        runs = (f"runs: the authors' {', '.join(f'{t:.2f}' for t in paper_runs)}; "
                f"ours {', '.join(f'{t:.2f}' for t in ours_runs)}")
        print(f"end to end, {workers} worker(s), batch {args.batch}: the authors' loop {paper:.2f} s/it, train_net.py "
              f"{ours:.2f} s/it ({paper / ours:.2f}x; medians {median:.2f}x)   [best of {args.repeats}; {runs}]",
              flush=True)


if __name__ == "__main__":
    main()
