"""
End-to-end training on real photographs, by precision: `train_net.py` in float32 and under MODEL.PRECISION's
autocast against the authors' loop (parity/paper_loop.py re-creates main.py at fd2c4cc), on the same COCO-json
data, the same network (from scratch), the same batch; and the fraction of the CPU's peak each side reaches.

Each run trains --iters iterations (the first 3 untimed: detectron2's IterationTimer leaves them out, and so does
the count for the authors' loop). The three sides take turns, --repeats runs each, so that load from other
processes falls on all alike; each prints its best and median seconds per iteration and the ratios.

Peak: the best rate of a --peak-size square matrix product in float32 and in the mixed dtype, measured in this
run (before and after the training runs; the best of both kept). A side's rate is the network's training FLOPs
per iteration (fvcore's count of one forward pass x 3 for forward and backward, one multiply-add = 2 FLOPs, as
for the matrix product) divided by its seconds per iteration; the assignment, the losses and the data loading
are in its time but not in its FLOPs.

    .venv/bin/python benchmarks/bench_train_real.py --paper-repo <checkout> --data /tmp/trees \
        [--backbone ShuffleNetV2 --size 320 --batch 8 --iters 23 --repeats 3 --precision auto --device cpu]

--device runs both sides there (default: the GPU when there is one; the authors' `.cuda()` calls then reach it).

--data is a COCO-json folder (annotations/train.json, images/), e.g. from
`tools/make_tree_tiles.py --split within-image --tile 192`.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from bench_data import load_dicts
from device_timing import device_description, synchronizer

from detectron2.modeling import build_model

from mutual_guide.engine.precision import PRECISIONS, resolve_precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "parity"))
from paper_code import add_paper_repo_argument  # noqa: E402
from paper_loop import train_paper_loop  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_paper_repo_argument(parser)
    parser.add_argument("--data", required=True, help="COCO-json folder (annotations/train.json, images/)")
    parser.add_argument("--backbone", default="ShuffleNetV2")
    parser.add_argument("--neck", default="FPN")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=23, help="training iterations per run (3 untimed)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading workers of both loops")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="MODEL.PRECISION of the mixed side")
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] for both sides (default: cuda when there is a GPU)")
    return parser.parse_args()


def num_classes_of(data):
    with open(os.path.join(data, "annotations", "train.json")) as f:
        return len(json.load(f)["categories"])


def train_net_opts(args, out, precision):
    spec = f"bench_train:coco:json={args.data}/annotations/train.json;images={args.data}/images"
    return [
        "MODEL.DEVICE", args.device, "MODEL.BACKBONE.NAME", args.backbone, "MODEL.NECK.NAME", args.neck,
        "MODEL.BACKBONE.PRETRAINED", "", "MODEL.MUTUAL_GUIDE.NUM_CLASSES", str(num_classes_of(args.data)),
        "INPUT.SIZE", str(args.size), "DATASETS.CUSTOM", json.dumps([spec]), "DATASETS.TRAIN", "('bench_train',)",
        "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.MAX_ITER", str(args.iters),
        "SOLVER.WARMUP_ITERS", "5", "SOLVER.CHECKPOINT_PERIOD", str(10**9), "SOLVER.BASE_LR", "0.0025",
        "DATALOADER.NUM_WORKERS", str(args.workers), "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True",
        "MODEL.PRECISION", precision, "SEED", "0", "OUTPUT_DIR", out,
    ]


def ours_seconds_per_iteration(args, precision):
    out = tempfile.mkdtemp(prefix="bench_train_real_")
    done = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", "configs/Base-MutualGuide.yaml",
         *train_net_opts(args, out, precision)],
        cwd=ROOT, capture_output=True, text=True,
    )
    text = done.stdout + done.stderr
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode:
        raise RuntimeError(f"train_net.py failed:\n{text[-3000:]}")
    # detectron2's IterationTimer: "Overall training speed: N iterations in H:MM:SS (X s / it)", first 3 left out
    return float(re.search(r"Overall training speed: .*\(([\d.]+) s / it\)", text).group(1))


def paper_seconds_per_iteration(args, dicts):
    stamps, sync = [], synchronizer(args.device)
    train_paper_loop(args.paper_repo, dicts, size=args.size, num_classes=num_classes_of(args.data),
                     backbone=args.backbone, neck=args.neck, mutual_guide=True, base_lr=0.0025, warm_iter=5,
                     max_iter=args.iters, batch=args.batch, workers=args.workers, seed=0, log_every=10**9,
                     on_step=lambda i: (sync(), stamps.append(time.perf_counter())), device=args.device)
    return (stamps[-1] - stamps[2]) / (len(stamps) - 3)


def matmul_peak(dtype, size, device, repeats=5):
    """Best FLOP/s of a size x size matrix product in `dtype` on `device` (2 size^3 FLOPs each)."""
    a, b = torch.randn(size, size).to(device, dtype), torch.randn(size, size).to(device, dtype)
    sync = synchronizer(device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(args):
    """FLOPs of one training iteration's network: fvcore's forward count (multiply-adds) x 2 x 3, x batch."""
    from fvcore.nn import FlopCountAnalysis

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_train_step import make_cfg

    model = build_model(make_cfg(args.backbone, args.neck, args.size, num_classes_of(args.data))).eval()
    x = torch.zeros(1, 3, args.size, args.size)
    counter = FlopCountAnalysis(model.backbone, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        features = model.backbone(x)
        feats = [features[f] for f in model.head_in_features]
        neck = FlopCountAnalysis(model.neck, (feats,)).unsupported_ops_warnings(False)
        head = FlopCountAnalysis(model.head, (model.neck(feats),)).unsupported_ops_warnings(False)
        macs = counter.total() + neck.total() + head.total()
    return macs * 2 * 3 * args.batch


def main():
    args = parse_args()
    args.data = os.path.abspath(args.data)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    mixed = resolve_precision(args.precision, args.device)
    dicts = load_dicts(args.data)
    flops = training_flops(args)
    peaks = {"float32": matmul_peak(torch.float32, args.peak_size, args.device)}
    if mixed.mixed:
        peaks[mixed.name] = matmul_peak(mixed.dtype, args.peak_size, args.device)
    sides = {"the authors' loop": lambda: paper_seconds_per_iteration(args, dicts),
             "train_net.py float32": lambda: ours_seconds_per_iteration(args, "float32")}
    if mixed.mixed:
        sides[f"train_net.py {mixed.name}"] = lambda: ours_seconds_per_iteration(args, args.precision)
    runs = {name: [] for name in sides}
    for r in range(args.repeats):
        for name, run in sides.items():
            runs[name].append(run())
            print(f"[run {r + 1}/{args.repeats}] {name}: {runs[name][-1]:.3f} s/it", flush=True)
    peaks["float32"] = max(peaks["float32"], matmul_peak(torch.float32, args.peak_size, args.device))
    if mixed.mixed:
        peaks[mixed.name] = max(peaks[mixed.name], matmul_peak(mixed.dtype, args.peak_size, args.device))

    with_objects = sum(1 for d in dicts if d.get("annotations"))
    print(f"\n{with_objects} training images with objects of the {len(dicts)} in {args.data} (both sides leave the "
          f"others out), {args.backbone}-{args.neck} {args.size}x{args.size}, batch {args.batch}, {args.workers} "
          f"loader worker(s), {device_description(args.device)}, {args.iters} iterations a run (3 "
          f"untimed), {args.repeats} runs a side in turn")
    print("peak (matrix product %d^2): %s" % (args.peak_size, ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s"
                                                                          for k, v in peaks.items())))
    print(f"network training FLOPs per iteration: {flops / 1e9:.1f} GFLOP")
    reference = min(runs["the authors' loop"])
    reference_median = statistics.median(runs["the authors' loop"])
    print(f"{'side':26} {'best s/it':>9} {'median':>7}  {'vs authors (best / median)':>27}  {'GFLOP/s':>8} {'of peak':>8}")
    for name, times in runs.items():
        dtype = mixed.name if name.endswith(mixed.name) and mixed.mixed else "float32"
        rate = flops / min(times)
        print(f"{name:26} {min(times):9.3f} {statistics.median(times):7.3f}  "
              f"{reference / min(times):12.2f}x / {reference_median / statistics.median(times):5.2f}x       "
              f"{rate / 1e9:8.1f} {100 * rate / peaks[dtype]:7.1f}%  (runs: {', '.join(f'{t:.3f}' for t in times)})")


if __name__ == "__main__":
    main()
