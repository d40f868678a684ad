"""
Precision x memory layout on one device: float32 and the device's reduced dtype under autocast (bfloat16 on a CPU
that runs it fast; on a GPU bfloat16 where supported, else float16), NCHW and NHWC, for the test-time forward pass
(BatchNorm folded, batch 1) and the training step (forward, assignment, losses, backward; batch --batch), per
backbone. The four variants of one backbone take turns, --repeats times after a warm-up; each prints its best and
median time and its ratio to float32 NCHW. MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES lists the devices where NHWC
wins (docs/benchmarks.md); on a GPU, run it with --device cuda and set that key from what it prints.

    .venv/bin/python benchmarks/bench_precision_layout.py [--backbones VGG16 ResNet18 ShuffleNetV2] [--size 320]
        [--device cpu|cuda]
"""
import argparse
import copy
import statistics
import time

import torch
from bench_train_step import make_batch, make_cfg
from device_timing import device_description, synchronizer

from detectron2.modeling import build_model

from mutual_guide.engine.precision import device_capabilities, resolve_precision


def variants(reduced):
    """(dtype, NHWC?) pairs: float32 NCHW first (the reference), then NHWC, then the reduced dtype in both."""
    return [(dtype, nhwc) for dtype in (torch.float32, reduced) for nhwc in (False, True)]


def variant_name(dtype, nhwc):
    return f"{str(dtype).replace('torch.', ''):8} {'NHWC' if nhwc else 'NCHW'}"


def build(backbone, neck, size, num_classes, nhwc, device):
    cfg = make_cfg(backbone, neck, size, num_classes)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = [torch.device(device).type] if nhwc else []
    torch.manual_seed(0)
    return build_model(cfg)


def timed(fn, device):
    """Seconds of fn(), the device's queued work included (a GPU runs asynchronously)."""
    sync = synchronizer(device)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["VGG16", "ResNet18", "ShuffleNetV2"])
    parser.add_argument("--neck", default="FPN")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4, help="images per training step")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when there is a GPU)")
    args = parser.parse_args()
    device_type = torch.device(args.device).type
    capabilities = device_capabilities(args.device)
    # the reduced dtype MODEL.PRECISION "auto" takes here; where nothing is faster, bfloat16 is timed anyway
    reduced = resolve_precision("auto", args.device, capabilities=capabilities).dtype
    reduced = torch.bfloat16 if reduced == torch.float32 else reduced
    print(f"{device_description(args.device)}, torch {torch.__version__}, {args.size}x{args.size}, "
          f"{args.num_classes} classes; {capabilities.detail}")
    if reduced == torch.float16:
        print("float16 steps run without loss scaling here: their times count, not their losses")
    tried = variants(reduced)
    batch = make_batch(args.batch, args.size, args.num_classes)
    image = make_batch(1, args.size, args.num_classes, seed=1)
    for backbone in args.backbones:
        trained, fused = {}, {}
        for dtype, nhwc in tried:
            model = build(backbone, args.neck, args.size, args.num_classes, nhwc, args.device).train()
            if trained:  # every variant from the same weights
                model.load_state_dict(next(iter(trained.values())).state_dict())
            trained[dtype, nhwc] = model
            fused[dtype, nhwc] = copy.deepcopy(model).fuse_for_inference()
        times = {(kind, v): [] for kind in ("forward", "train step") for v in tried}

        def forward(v):
            with torch.no_grad(), torch.autocast(device_type, dtype=v[0], enabled=v[0] != torch.float32):
                fused[v](image)

        def step(v):
            model = trained[v]
            with torch.autocast(device_type, dtype=v[0], enabled=v[0] != torch.float32):
                losses = model(batch)
            model.zero_grad()
            sum(losses.values()).backward()

        for r in range(args.repeats + 1):
            for v in tried:
                t_fwd, t_step = timed(lambda: forward(v), args.device), timed(lambda: step(v), args.device)
                if r:  # the first round warms up
                    times["forward", v].append(t_fwd)
                    times["train step", v].append(t_step)
        print(f"\n{backbone}-{args.neck}: ms, best / median of {args.repeats}; ratio = float32 NCHW / variant "
              f"(best)")
        for kind in ("forward", "train step"):
            base = min(times[kind, tried[0]])
            label = "forward (batch 1, fused)" if kind == "forward" else f"train step (batch {args.batch})"
            print(f"  {label}")
            for v in tried:
                t = times[kind, v]
                print(f"    {variant_name(*v)}  {min(t) * 1e3:8.0f} / {statistics.median(t) * 1e3:8.0f}   "
                      f"{base / min(t):5.2f}x")


if __name__ == "__main__":
    main()
