#!/usr/bin/env python
"""
Speed and size of a Mutual Guidance detector on one device.

    .venv/bin/python tools/benchmark.py --config-file configs/mg_vgg16_fpn_voc.yaml [--device cpu] \
        [--batch-sizes 1 8] [--iters 10] [opts KEY VALUE ...]
    .venv/bin/python tools/benchmark.py --all --iters 2        # every backbone x neck at 320, a markdown table
    .venv/bin/python tools/benchmark.py --config-file ... --device cuda --batch-sizes 1 32 --layouts

Prints, for the fused network (RepVGG re-parameterised, BatchNorm folded, as deployed):
  - network latency and images per second at each batch size (random weights: speed does not depend on them);
  - end-to-end latency at batch 1: uint8 image -> final detections (normalisation, network, score threshold,
    decoding, NMS), with the head rescaled so that about 1% of the (anchor, class) pairs pass the threshold;
  - the anchor assignment of one training batch (SOLVER.IMS_PER_BATCH images, or --assign-batch), with mutual
    guidance and with the IoU baseline, on random predictions and synthetic ground truth (1 to 10 boxes each);
  - parameters (train-time network) and FLOPs of one image (fvcore; one multiply-add counts as one FLOP);
  - with --layouts, the network in the NHWC and the NCHW layout, inference and training, to set
    MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES for the device.
On a GPU every time includes a torch.cuda.synchronize(); --device cuda stops with a message where there is none.

This is the "how fast is my config" tool; benchmarks/ holds the side-by-side speed comparisons (ours against the
paper's way), whose head rescaling and synthetic ground truth this tool reuses so that both time the same thing.
"""
import argparse
import copy
import os
import sys
import time

import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import mutual_guide
import mutual_guide.modeling.backbone  # noqa: F401  (registers the backbones)
import mutual_guide.modeling.meta_arch.detector  # noqa: F401  (registers the detector)
from mutual_guide.engine.devices import check_device
from mutual_guide.modeling.assignment import build_anchor_matcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # benchmarks/ is a folder of scripts, not a package
from bench_assignment import random_ground_truth  # noqa: E402
from bench_inference import spread_head  # noqa: E402

BACKBONES = [("vgg16", "VGG16"), ("resnet18", "ResNet18"), ("repvgg", "RepVGG-A2"), ("shufflenet", "ShuffleNetV2")]
NECKS = [("ssd", "SSD"), ("fpn", "FPN"), ("pafpn", "PAFPN"), ("rfb", "RFB")]


def setup_cfg(config_file, opts, device):
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.MODEL.BACKBONE.PRETRAINED = ""
    try:
        cfg.MODEL.DEVICE = check_device(device)
    except ValueError as e:
        sys.exit(f"benchmark.py: --device: {e}")
    return cfg


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn, iters: int, device: str, warmup: int = 1) -> float:
    """Mean seconds per call after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


class _Network(nn.Module):
    """model.predict as a module, for fvcore."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.predict(images)


@torch.no_grad()
def measure(cfg, batch_sizes, iters: int, assign_batch: int, flops: bool = True):
    device = cfg.MODEL.DEVICE
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    fused = copy.deepcopy(model).fuse_for_inference()
    size = cfg.INPUT.SIZE
    result = {"params_m": params / 1e6, "anchors": len(model.anchors), "latency": {}}

    for bs in batch_sizes:
        x = torch.randn(bs, 3, size, size, device=device) * 50
        seconds = time_it(lambda: fused.predict(x), iters, device)
        result["latency"][bs] = (seconds * 1e3, bs / seconds)

    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, device=device)
    spread_head(fused, (image.float() - fused.pixel_mean)[None], fraction=0.01)
    result["end_to_end_ms"] = time_it(lambda: fused([{"image": image}]), iters, device) * 1e3

    n, a, c = assign_batch, len(model.anchors), model.num_classes
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, a, c, generator=g) * 1.5 - 4).to(device)
    deltas = (torch.randn(n, a, 4, generator=g) * 0.5).to(device)
    gt = [x.to(device) for x in random_ground_truth(n, size, c, boxes_per_image=(1, 10))]
    configured = model.anchor_matcher
    for key, enabled in (("assign_mg_ms", True), ("assign_iou_ms", False)):
        model.anchor_matcher = build_anchor_matcher(enabled, cfg.MODEL.MUTUAL_GUIDE.IOU_THRESHOLDS, c)
        result[key] = time_it(lambda: model.label_anchors(logits, deltas, gt), max(1, iters // 2), device) * 1e3
    model.anchor_matcher = configured

    if flops:
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(_Network(fused), torch.zeros(1, 3, size, size, device=device))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        result["gflops"] = analysis.total() / 1e9
    return result


def measure_layouts(cfg, batch_size: int, iters: int):
    """
    Seconds per batch of the network in both memory layouts, NHWC (channels_last) and NCHW, on cfg's device:
    fused inference (forward) and training (forward + backward). What MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES
    should say for this device.
    """
    device, size = cfg.MODEL.DEVICE, cfg.INPUT.SIZE
    x = torch.randn(batch_size, 3, size, size, device=device) * 50
    result = {}
    for layout in ("NHWC", "NCHW"):
        cfg = cfg.clone()
        cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = [torch.device(device).type] if layout == "NHWC" else []
        torch.manual_seed(0)
        model = build_model(cfg).train()

        def train_step():
            logits, deltas = model.predict(x)
            (logits.float().square().mean() + deltas.float().square().mean()).backward()

        train = time_it(train_step, iters, device)
        fused = model.fuse_for_inference()
        with torch.no_grad():
            result[layout] = (time_it(lambda: fused.predict(x), iters, device), train)
    return result


def print_one(cfg, r, assign_batch):
    print(f"{cfg.MODEL.BACKBONE.NAME} + {cfg.MODEL.NECK.NAME}, {cfg.INPUT.SIZE}x{cfg.INPUT.SIZE}, "
          f"{cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES} classes, {r['anchors']} anchors, device {cfg.MODEL.DEVICE}, "
          f"{torch.get_num_threads()} threads")
    print(f"  parameters: {r['params_m']:.2f} M   FLOPs (fvcore, 1 image): {r.get('gflops', float('nan')):.2f} G")
    for bs, (ms, fps) in r["latency"].items():
        print(f"  network, fused, batch {bs}: {ms:.1f} ms per batch, {fps:.1f} images/s")
    print(f"  end to end, batch 1 (uint8 image -> detections): {r['end_to_end_ms']:.1f} ms")
    print(f"  assignment of a training batch of {assign_batch}: mutual guidance {r['assign_mg_ms']:.1f} ms, "
          f"IoU baseline {r['assign_iou_ms']:.1f} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "mg_vgg16_fpn_voc.yaml"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (times include a CUDA synchronize)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--assign-batch", type=int, default=0, help="images per assignment (default: "
                        "SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--all", action="store_true", help="every backbone x neck at 320 (VOC configs), as a table")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--layouts", action="store_true", help="also time the network in the NHWC and NCHW "
                        "layouts (inference and training) at the largest batch size")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if not args.all:
        cfg = setup_cfg(args.config_file, args.opts, args.device)
        assign_batch = args.assign_batch or cfg.SOLVER.IMS_PER_BATCH
        print_one(cfg, measure(cfg, args.batch_sizes, args.iters, assign_batch, not args.no_flops), assign_batch)
        if args.layouts:
            big = max(args.batch_sizes)
            for layout, (infer, train) in measure_layouts(cfg, big, args.iters).items():
                print(f"  layout {layout}, batch {big}: inference {infer * 1e3:.1f} ms, training forward + backward "
                      f"{train * 1e3:.1f} ms")
        return

    big = max(args.batch_sizes)
    rows = []
    for key, backbone in BACKBONES:
        for neck_key, neck in NECKS:
            cfg = setup_cfg(os.path.join(ROOT, "configs", f"mg_{key}_{neck_key}_voc.yaml"), args.opts, args.device)
            assign_batch = args.assign_batch or cfg.SOLVER.IMS_PER_BATCH
            r = measure(cfg, sorted({1, big}), args.iters, assign_batch, not args.no_flops)
            (ms1, fps1), (msb, fpsb) = r["latency"][1], r["latency"][big]
            rows.append(
                f"| {backbone} | {neck} | {r['params_m']:.1f} | {r.get('gflops', float('nan')):.1f} | {ms1:.0f} | "
                f"{fps1:.1f} | {msb:.0f} | {fpsb:.1f} | {r['end_to_end_ms']:.0f} | {r['assign_mg_ms']:.0f} | "
                f"{r['assign_iou_ms']:.0f} |"
            )
            print(rows[-1], flush=True)
    print()
    print(f"VOC configs (20 classes), 320 x 320, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.iters} timed iterations; assignment batch {assign_batch}")
    print()
    print(f"| Backbone | Neck | Params (M) | GFLOPs | batch 1 (ms) | batch 1 (img/s) | batch {big} (ms) | "
          f"batch {big} (img/s) | end to end (ms) | assign MG (ms) | assign IoU (ms) |")
    print("|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
