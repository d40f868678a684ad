#!/usr/bin/env python
"""
Test-time detection (normalised image -> final boxes), ours against the paper's style, side by side.

ours:  BatchNorm folded and RepVGG fused (`fuse_for_inference`), in the NHWC layout on the CPU
       (MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES), `MutualGuideDetector.inference`: the best TEST.TOPK_CANDIDATES
       pairs of each level, those above the score threshold, one batched NMS call over all classes.
paper: the unfused network in NCHW, every anchor decoded, then a loop over classes, each with a numpy greedy NMS
       (the authors' `utils/box/nms.py` style: argsort, then suppress against the best remaining box).

ours bfloat16: ours under MODEL.PRECISION's autocast (--precision, default "auto": bfloat16 where the CPU runs it
       faster than float32, mutual_guide/engine/precision.py); the post-processing in float32 as always.
authors': with --paper-repo DIR (the authors' code at fd2c4cc, parity/README.md), their own test path of main.py:
       their Detector network (same weights), their `Detect` (every anchor decoded, sigmoid scores), then per
       class a threshold and their `nms`, and their cap of 300 detections per image.

onnx:  ours exported with NMS in the graph (`export_onnx(..., with_nms=True)`), run by onnxruntime on the CPU:
       the deployment path; its time covers uint8 image -> detections in one call.

All run on the same random-weight model and the same images, one image at a time (the paper's test loop), and
ours also in batches of TEST.IMS_PER_BATCH as our evaluation runs; the sides take turns, --repeats passes each.
Each pass of a mixed side runs in one autocast context, as our evaluation does (the predictor enters one per
image, which adds the weights' cast to each call: about 4 ms for VGG16 on this CPU).
--device runs every PyTorch side there (default: the GPU when there is one; the authors' `.cuda()` calls then
reach it), the numpy post-processing of the paper's style and of the authors' code on the CPU as theirs does;
ONNX Runtime runs on the CPU only, so it is left out on a GPU.
Untrained heads score every anchor alike, so the head is rescaled to spread the logits such that about
--candidate-fraction of the (anchor, class) pairs pass SCORE_THRESH_TEST, as a trained detector's do.
Prints per-image times of the network and of the post-processing, and the ratio paper / ours.

    .venv/bin/python benchmarks/bench_inference.py [--config-file configs/mg_vgg16_fpn_coco.yaml] [--images 8]
        [--paper-repo <checkout>] [--precision auto|bfloat16|float16|float32] [--device cpu|cuda]
"""
import argparse
import contextlib
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from device_timing import device_description, synchronizer

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import mutual_guide
import mutual_guide.modeling.backbone  # noqa: F401  (registers the backbones)
import mutual_guide.modeling.meta_arch.detector  # noqa: F401  (registers the detector)
from mutual_guide.checkpoint.paper_keys import to_paper_state_dict
from mutual_guide.engine.precision import PRECISIONS, resolve_precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "parity"))
from paper_code import PAPER_REPO_HELP, add_paper_repo_argument, import_paper, set_paper_device  # noqa: E402
from paper_loop import build_paper_model  # noqa: E402

PAPER_NETWORKS = {"VGG16", "ResNet18", "RepVGG", "ShuffleNetV2"}


def numpy_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float):
    """Greedy NMS as the paper's code does it (with its +1 pixel convention)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= thresh)[0] + 1]
    return keep


def paper_postprocess(model, logits: torch.Tensor, deltas: torch.Tensor):
    """Decode all anchors, then per class: threshold, numpy NMS; keep the best max_detections overall."""
    boxes = model.box2box_transform.apply_deltas(deltas[0], model.anchors).clamp(0, model.input_size).cpu().numpy()
    scores = logits[0].sigmoid().cpu().numpy()
    detections = []
    for j in range(model.num_classes):
        inds = np.where(scores[:, j] > model.test_score_thresh)[0]
        if len(inds) == 0:
            continue
        keep = numpy_nms(boxes[inds], scores[inds, j], model.test_nms_thresh)
        detections.append(np.hstack([boxes[inds[keep]], scores[inds[keep], j : j + 1], np.full((len(keep), 1), j)]))
    detections = np.concatenate(detections) if detections else np.zeros((0, 6))
    return detections[np.argsort(-detections[:, 4])[: model.max_detections_per_image]]


@torch.no_grad()
def spread_head(model, images: torch.Tensor, fraction: float):
    """Rescale the class head so logits ~ N(mu, 1.5) with `fraction` of them above the score threshold."""
    for conv in model.head.conf:
        conv.bias.zero_()
    logits, _ = model.predict(images[:1])
    std = 1.5
    z = math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * fraction)).item()  # P(N(0,1) > z) = fraction
    thresh_logit = math.log(model.test_score_thresh / (1 - model.test_score_thresh))
    for conv in model.head.conf:
        conv.weight.mul_(std / logits.std())
        conv.bias.fill_(thresh_logit - z * std)
    _, deltas = model.predict(images[:1])
    for conv in model.head.loc:
        conv.weight.mul_(0.5 / deltas.std())


def authors_side(paper_repo, cfg, model, images):
    """
    The authors' test path (main.py at fd2c4cc, its evaluation loop, read and re-created around their modules):
    their network, their Detect, then per class: threshold, their `nms`; at most 300 per image. Returns the
    per-image runner, or None when the config's network is not one of theirs.
    """
    if cfg.MODEL.BACKBONE.NAME not in PAPER_NETWORKS or cfg.MODEL.NECK.NAME not in ("SSD", "FPN", "PAFPN"):
        return None
    network = build_paper_model(paper_repo, cfg.INPUT.SIZE, model.num_classes, cfg.MODEL.BACKBONE.NAME,
                                cfg.MODEL.NECK.NAME).eval()
    network.load_state_dict(to_paper_state_dict(model.state_dict()))
    box, prior_box = import_paper(paper_repo, "utils.box", "utils.box.prior_box")
    device = set_paper_device(model.device)
    network.cuda()  # main.py's placement: here the device of the benchmark
    priors = prior_box.PriorBox(cfg.MODEL.MUTUAL_GUIDE.ANCHOR_BASE_SIZE, cfg.INPUT.SIZE).forward().cuda()
    detect = box.Detect(model.num_classes + 1)
    scale = torch.tensor([cfg.INPUT.SIZE] * 4, dtype=torch.float32).cuda()
    sync = synchronizer(device)
    thresh, nms_thresh, max_per_image = model.test_score_thresh, model.test_nms_thresh, 300

    def run():
        network_time = postprocess = 0.0
        for x in images:
            t0 = time.perf_counter()
            boxes, scores = detect.forward(network(x), priors)  # main.py times these two as "im_detect"
            sync()
            t1 = time.perf_counter()
            boxes = (boxes * scale).cpu().numpy()
            scores = scores.cpu().numpy()
            kept = []
            for j in range(model.num_classes):
                inds = np.where(scores[:, j] > thresh)[0]
                if len(inds) == 0:
                    kept.append(np.empty([0, 5], dtype=np.float32))
                    continue
                dets = np.hstack((boxes[inds], scores[inds, j][:, None])).astype(np.float32, copy=False)
                kept.append(dets[box.nms(dets, thresh=nms_thresh)])
            all_scores = np.hstack([d[:, -1] for d in kept])
            if len(all_scores) > max_per_image:
                image_thresh = np.sort(all_scores)[-max_per_image]
                kept = [d[d[:, -1] >= image_thresh] for d in kept]
            network_time, postprocess = network_time + t1 - t0, postprocess + time.perf_counter() - t1
        return network_time / len(images), postprocess / len(images)

    return run


def onnx_session(model, folder):
    """The model exported with NMS in the graph, in an onnxruntime CPU session, or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from mutual_guide.export.exportable import export_onnx

    path = export_onnx(model, os.path.join(folder, "model.onnx"), with_nms=True)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "mg_vgg16_fpn_coco.yaml"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images per side, taken in turn; "
                        "each side keeps its best pass")
    parser.add_argument("--candidate-fraction", type=float, default=0.01,
                        help="share of (anchor, class) pairs above SCORE_THRESH_TEST")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="MODEL.PRECISION of the 'ours <dtype>' sides (float32: no such sides)")
    add_paper_repo_argument(parser, required=False, help=PAPER_REPO_HELP + ": also time the authors' test path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when there is a GPU)")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    mixed = resolve_precision(args.precision, args.device)
    sync = synchronizer(args.device)

    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.BACKBONE.PRETRAINED = ""
    cfg.MODEL.DEVICE = args.device
    torch.manual_seed(0)
    paper_cfg = cfg.clone()
    paper_cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = []  # the paper's NCHW layout
    paper = build_model(paper_cfg).eval()
    size = cfg.INPUT.SIZE
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 1, 3, size, size), generator=g).float().to(paper.device)
    images = images - paper.pixel_mean.view(1, 1, 3, 1, 1)
    spread_head(paper, images[0], args.candidate_fraction)
    ours = build_model(cfg).eval()  # NHWC where CHANNELS_LAST_DEVICES says so (the CPU)
    ours.load_state_dict(paper.state_dict())
    ours.fuse_for_inference()

    def per_image(model, post):
        """Seconds of the network and of the post-processing, per image, one image at a time."""
        def run():
            network = postprocess = 0.0
            for x in images:
                sync()
                t0 = time.perf_counter()
                logits, deltas = model.predict(x)
                sync()
                t1 = time.perf_counter()
                post(model, logits, deltas)
                sync()
                network, postprocess = network + t1 - t0, postprocess + time.perf_counter() - t1
            return network / len(images), postprocess / len(images)
        return run

    def batched(precision=None):
        """Ours as evaluation runs it: TEST.IMS_PER_BATCH images per call."""
        def run():
            network = postprocess = 0.0
            for batch in images.squeeze(1).split(cfg.TEST.IMS_PER_BATCH):
                sync()
                t0 = time.perf_counter()
                with precision.autocast() if precision else contextlib.nullcontext():
                    logits, deltas = ours.predict(batch)
                    sync()
                    t1 = time.perf_counter()
                    ours.inference(logits, deltas)
                    sync()
                network, postprocess = network + t1 - t0, postprocess + time.perf_counter() - t1
            return network / len(images), postprocess / len(images)
        return run

    def under(precision, fn):
        def run():
            with precision.autocast():
                return fn()
        return run

    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        logits, deltas = ours.predict(images[0])
        candidates = int((logits.sigmoid() > ours.test_score_thresh).sum())
        counts = (len(ours.inference(logits, deltas)[0]), len(paper_postprocess(paper, logits, deltas)))
        n_batch = min(cfg.TEST.IMS_PER_BATCH, args.images)
        sides = {
            "ours": per_image(ours, lambda m, lo, de: m.inference(lo, de)),
            "paper": per_image(paper, paper_postprocess),
            f"ours x{n_batch}": batched(),
        }
        if mixed.mixed:
            sides[f"ours {mixed.name}"] = under(mixed, per_image(ours, lambda m, lo, de: m.inference(lo, de)))
            sides[f"ours {mixed.name} x{n_batch}"] = batched(mixed)
        if args.paper_repo:
            authors = authors_side(args.paper_repo, cfg, paper, images)
            if authors is not None:
                sides["authors'"] = authors
        session = onnx_session(paper, folder) if paper.device.type == "cpu" else None
        if session is not None:
            uint8 = (images + paper.pixel_mean.view(1, 1, 3, 1, 1)).round().clamp(0, 255).to(torch.uint8).numpy()

            def onnx():
                start = time.perf_counter()
                for x in uint8:
                    session.run(None, {"images": x})
                return None, (time.perf_counter() - start) / len(uint8)

            sides["onnx"] = onnx
        # every side in turn, --repeats times after a warm-up; each keeps its best pass
        results = {name: [] for name in sides}
        for _ in range(args.repeats + 1):
            for name, fn in sides.items():
                results[name].append(fn())
        times = {name: min(r[1:], key=lambda t: (t[0] or 0) + t[1]) for name, r in results.items()}

    print(f"{os.path.basename(args.config_file)}: {size}x{size}, {paper.num_classes} classes, "
          f"{len(paper.anchors)} anchors, {candidates} candidates above {paper.test_score_thresh} in image 0, "
          f"detections {counts[0]} (ours) / {counts[1]} (paper), {args.images} images, "
          f"{device_description(paper.device)}")
    print(f"{'per image':18} {'network ms':>11} {'post-process ms':>16} {'total ms':>9}")
    for name, (network, post) in times.items():
        if network is None:
            print(f"{name:18} {'':>11} {'':>16} {post * 1e3:9.1f}   (one graph: network and post-processing)")
        else:
            print(f"{name:18} {network * 1e3:11.1f} {post * 1e3:16.1f} {(network + post) * 1e3:9.1f}")
    (on, op), (pn, pp) = times["ours"], times["paper"]
    print(f"speed-up paper / ours (PyTorch): total {(pn + pp) / (on + op):.2f}x, network {pn / on:.2f}x, "
          f"post-processing {pp / op:.2f}x")
    bn, bp = times[f"ours x{min(cfg.TEST.IMS_PER_BATCH, args.images)}"]
    print(f"speed-up paper / ours in evaluation batches of {min(cfg.TEST.IMS_PER_BATCH, args.images)} (the paper's "
          f"test loop takes one image at a time): total {(pn + pp) / (bn + bp):.2f}x")
    if "onnx" in times:
        print(f"speed-up paper / ours (ONNX Runtime): total {(pn + pp) / times['onnx'][1]:.2f}x")
    for name in [n for n in times if n.startswith(f"ours {mixed.name}")] if mixed.mixed else []:
        mn, mp = times[name]
        against = [("paper-style", pn + pp), ("ours float32", on + op)]
        if "authors'" in times:
            against.insert(0, ("the authors' code", sum(times["authors'"])))
        print(f"speed-up of {name}: " + ", ".join(f"{label} / it {t / (mn + mp):.2f}x" for label, t in against))


if __name__ == "__main__":
    main()
