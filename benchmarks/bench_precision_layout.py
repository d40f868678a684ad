"""
Precision x memory layout on this machine's CPU: float32 and bfloat16 autocast, NCHW and NHWC, for the test-time
forward pass (BatchNorm folded, batch 1) and the training step (forward, assignment, losses, backward; batch
--batch), per backbone. The four variants of one backbone take turns, --repeats times after a warm-up; each prints
its best and median time and its ratio to float32 NCHW. MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES follows what
this prints (docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_precision_layout.py [--backbones VGG16 ResNet18 ShuffleNetV2] [--size 320]
"""
import argparse
import copy
import statistics
import time

import torch
from bench_train_step import make_batch, make_cfg

from detectron2.modeling import build_model

from mutual_guide.engine.precision import cpu_capabilities

VARIANTS = [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.bfloat16, True)]


def variant_name(dtype, nhwc):
    return f"{'bfloat16' if dtype == torch.bfloat16 else 'float32 '} {'NHWC' if nhwc else 'NCHW'}"


def build(backbone, neck, size, num_classes, nhwc):
    cfg = make_cfg(backbone, neck, size, num_classes)
    cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = ["cpu"] if nhwc else []
    torch.manual_seed(0)
    return build_model(cfg)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["VGG16", "ResNet18", "ShuffleNetV2"])
    parser.add_argument("--neck", default="FPN")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4, help="images per training step")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.size}x{args.size}, "
          f"{args.num_classes} classes; {cpu_capabilities().detail}")
    batch = make_batch(args.batch, args.size, args.num_classes)
    image = make_batch(1, args.size, args.num_classes, seed=1)
    for backbone in args.backbones:
        trained, fused = {}, {}
        for dtype, nhwc in VARIANTS:
            model = build(backbone, args.neck, args.size, args.num_classes, nhwc).train()
            if trained:  # every variant from the same weights
                model.load_state_dict(next(iter(trained.values())).state_dict())
            trained[dtype, nhwc] = model
            fused[dtype, nhwc] = copy.deepcopy(model).fuse_for_inference()
        times = {(kind, v): [] for kind in ("forward", "train step") for v in VARIANTS}

        def forward(v):
            with torch.no_grad(), torch.autocast("cpu", dtype=v[0], enabled=v[0] != torch.float32):
                fused[v](image)

        def step(v):
            model = trained[v]
            with torch.autocast("cpu", dtype=v[0], enabled=v[0] != torch.float32):
                losses = model(batch)
            model.zero_grad()
            sum(losses.values()).backward()

        for r in range(args.repeats + 1):
            for v in VARIANTS:
                t_fwd, t_step = timed(lambda: forward(v)), timed(lambda: step(v))
                if r:  # the first round warms up
                    times["forward", v].append(t_fwd)
                    times["train step", v].append(t_step)
        print(f"\n{backbone}-{args.neck}: ms, best / median of {args.repeats}; ratio = float32 NCHW / variant "
              f"(best)")
        for kind in ("forward", "train step"):
            base = min(times[kind, VARIANTS[0]])
            label = "forward (batch 1, fused)" if kind == "forward" else f"train step (batch {args.batch})"
            print(f"  {label}")
            for v in VARIANTS:
                t = times[kind, v]
                print(f"    {variant_name(*v)}  {min(t) * 1e3:8.0f} / {statistics.median(t) * 1e3:8.0f}   "
                      f"{base / min(t):5.2f}x")


if __name__ == "__main__":
    main()
