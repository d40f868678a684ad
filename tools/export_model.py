#!/usr/bin/env python
"""
Export a trained Mutual Guidance detector to ONNX and/or TorchScript.

    .venv/bin/python tools/export_model.py --config-file configs/mg_vgg16_fpn_voc.yaml --format both \
        --output exported/ --with-nms MODEL.WEIGHTS output/mg_vgg16_fpn_voc/model_final.pth
    # check the exported files against PyTorch on real images:
    ... --verify photo1.jpg photo2.jpg
    # trace and verify on a GPU (the ONNX file is the same; the TorchScript file then expects CUDA inputs):
    ... --device cuda --verify photo1.jpg

The exported model takes a BGR batch already resized to INPUT.SIZE x INPUT.SIZE ([N, 3, S, S], uint8 by default)
and returns "boxes" [N, A, 4] (XYXY, S x S pixels) and "scores" [N, A, C]; with --with-nms it returns
"num_detections" [N], "boxes" [N, 300, 4], "scores" [N, 300], "classes" [N, 300] instead.
RepVGG blocks are fused and BatchNorm folded before export.

MODEL.PRECISION bfloat16 (or float16, or "auto" where it resolves to one; mutual_guide/engine/precision.py):
the TorchScript file runs its network in that dtype (weights cast after BatchNorm folding; decoding, scores and
NMS in float32). ONNX files are always float32: the reason is printed.
"""
import argparse
import os
import re
import sys

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import mutual_guide
import mutual_guide.modeling.backbone  # noqa: F401  (registers the backbones)
import mutual_guide.modeling.meta_arch.detector  # noqa: F401  (registers the detector)
from mutual_guide.checkpoint.checkpointer import MutualGuideCheckpointer
from mutual_guide.data.resize import resize_to_input
from mutual_guide.engine.devices import check_device
from mutual_guide.engine.precision import precision_from_config
from mutual_guide.export.exportable import ONNX_FLOAT32_ONLY, add_nms, export_onnx, export_torchscript, prepare_for_export

DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=["onnx", "torchscript", "both"], default="onnx")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the exported files")
    parser.add_argument("--with-nms", action="store_true", help="put score threshold, NMS and top-k in the graph")
    parser.add_argument("--batch-size", type=int, default=1, help="batch of the example input (and of ONNX "
                        "inputs with --static-batch)")
    parser.add_argument("--static-batch", action="store_true", help="ONNX: fix the batch to --batch-size")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--input-dtype", choices=sorted(DTYPES), default="uint8")
    parser.add_argument("--device", default="cpu", help="device to trace on and to verify on (cpu, cuda, cuda:1); "
                        "ONNX files do not depend on it, TorchScript files expect their inputs on it")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="export without MODEL.WEIGHTS (an untrained network: for testing the export only)")
    parser.add_argument("--verify", nargs="+", metavar="IMAGE", default=[],
                        help="run the exported files beside PyTorch on these images and print the differences")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    # `--verify a.jpg b.jpg MODEL.WEIGHTS m.pth`: argparse gives everything after --verify to it
    images, opts = [], []
    tokens = iter(args.verify)
    for token in tokens:
        if _CONFIG_KEY.match(token):
            opts += [token, next(tokens, "")]
        else:
            images.append(token)
    args.verify, args.opts = images, opts + args.opts
    return args


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def setup_cfg(args):
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    try:
        cfg.MODEL.DEVICE = check_device(args.device)
    except ValueError as e:
        sys.exit(f"export_model.py: --device: {e}")
    cfg.MODEL.BACKBONE.PRETRAINED = ""  # MODEL.WEIGHTS holds the whole detector
    cfg.freeze()
    return cfg


def load_model(cfg, allow_random_weights: bool):
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        if not allow_random_weights:
            sys.exit(
                "export_model.py: MODEL.WEIGHTS is not set. Give the trained detector, e.g.\n"
                "  tools/export_model.py --config-file ... --output DIR MODEL.WEIGHTS output/.../model_final.pth\n"
                "(--allow-random-weights exports an untrained network, for testing the export only)"
            )
        print("WARNING: exporting an untrained network with random weights (--allow-random-weights)")
    elif "://" not in weights and not os.path.isfile(weights):
        sys.exit(f"export_model.py: MODEL.WEIGHTS file not found: {weights!r}")
    model = build_model(cfg)
    if weights:
        MutualGuideCheckpointer(model).load(weights)
    return model.eval()


def read_images(paths, size: int) -> torch.Tensor:
    """BGR images resized to size x size as evaluation and the predictor do (resize_to_input): [N, 3, S, S] uint8."""
    import cv2
    import numpy as np

    images = []
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            sys.exit(f"export_model.py: cannot read image {path!r}")
        images.append(resize_to_input(image, size))
    return torch.as_tensor(np.stack(images).transpose(0, 3, 1, 2).copy())


def _run_exported(path: str, images: torch.Tensor, fmt: str):
    """Outputs on the CPU; ONNX Runtime on the GPU when the images are there and its CUDA provider is installed."""
    if fmt == "onnx":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if images.is_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(path, providers=providers)
        feed = {session.get_inputs()[0].name: images.cpu().numpy()}
        return [torch.from_numpy(o) for o in session.run(None, feed)]
    with torch.no_grad():
        return [o.cpu() for o in torch.jit.load(path, map_location=images.device)(images)]


def verify(model, files, images: torch.Tensor, with_nms: bool, static_batch: int = 0, reduced=()):
    """
    Print the largest box and score differences between each exported file and the unfused float32 PyTorch model.
    Files of the formats in `reduced` run their network in bfloat16/float16: detections are matched with a score
    tolerance of 0.02 instead of 1e-5, and counts near the score threshold may differ.
    """
    reference = prepare_for_export(model, fuse=False)
    if with_nms:
        reference = add_nms(reference, model)
    images = images.to(model.device)
    with torch.no_grad():
        expected = [e.cpu() for e in reference(images)]
    for fmt, path, dtype in files:
        batches = [images]
        if static_batch:
            batches = [images[i:i + static_batch] for i in range(0, len(images), static_batch)]
        batches = [b for b in batches if len(b) == (static_batch or len(b))]
        if not batches:
            print(f"{path}: fixed batch {static_batch}, give at least {static_batch} images to verify")
            continue
        got = [_run_exported(path, b.to(dtype), fmt) for b in batches]
        got = [torch.cat(parts) for parts in zip(*got)]
        n = len(got[0])
        if with_nms:
            num, boxes, scores, classes = got
            same_count = torch.equal(num, expected[0][:n])
            box_diff = _matched_box_difference(got, [e[:n] for e in expected], 2e-2 if fmt in reduced else 1e-5)
            score_diff = float((scores - expected[2][:n]).abs().max())  # both sorted by score
            print(f"{path}: {n} images, detections per image {num.tolist()} (PyTorch {expected[0][:n].tolist()}, "
                  f"{'same' if same_count else 'DIFFERENT'}), max box difference {box_diff:.3g} px, "
                  f"max score difference {score_diff:.3g}")
        else:
            box_diff = float((got[0] - expected[0][:n]).abs().max())
            score_diff = float((got[1] - expected[1][:n]).abs().max())
            print(f"{path}: {n} images, max box difference {box_diff:.3g} px, max score difference {score_diff:.3g}")


def _matched_box_difference(got, expected, score_tol: float = 1e-5) -> float:
    """
    Largest distance from an exported detection to the closest PyTorch detection of the same class and score
    (within score_tol). Not a row-by-row difference: detections with equal scores may come in any order.
    """
    worst = 0.0
    for i in range(len(got[0])):
        n, m = int(got[0][i]), int(expected[0][i])
        boxes, scores, classes = got[1][i, :n], got[2][i, :n], got[3][i, :n]
        ref_boxes, ref_scores, ref_classes = expected[1][i, :m], expected[2][i, :m], expected[3][i, :m]
        if n == 0 or m == 0:
            continue
        distance = (boxes[:, None] - ref_boxes[None]).abs().amax(dim=2)
        comparable = (classes[:, None] == ref_classes[None]) & ((scores[:, None] - ref_scores[None]).abs() < score_tol)
        distance = torch.where(comparable, distance, torch.full_like(distance, float("inf")))
        worst = max(worst, float(distance.min(dim=1).values.max()))
    return worst


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_cfg(args)
    model = load_model(cfg, args.allow_random_weights)
    dtype = DTYPES[args.input_dtype]
    suffix = "_nms" if args.with_nms else ""
    name = os.path.splitext(os.path.basename(args.config_file))[0] + suffix
    os.makedirs(args.output, exist_ok=True)
    files = []
    precision = precision_from_config(cfg)
    if precision.mixed and args.format in ("onnx", "both"):
        print(f"MODEL.PRECISION {cfg.MODEL.PRECISION!r} ({precision.name} here): {ONNX_FLOAT32_ONLY}")
    if args.format in ("onnx", "both"):
        path = export_onnx(
            model, os.path.join(args.output, name + ".onnx"), opset=args.opset, with_nms=args.with_nms,
            dynamic_batch=not args.static_batch, batch_size=args.batch_size, input_dtype=dtype,
        )
        files.append(("onnx", path, dtype))
    if args.format in ("torchscript", "both"):
        path = export_torchscript(
            model, os.path.join(args.output, name + ".ts"), with_nms=args.with_nms, batch_size=args.batch_size,
            input_dtype=dtype, dtype=precision.dtype,
        )
        files.append(("torchscript", path, dtype))
    size = cfg.INPUT.SIZE
    for fmt, path, _ in files:
        outputs = "num_detections, boxes, scores, classes" if args.with_nms else "boxes, scores"
        network = precision.name if fmt == "torchscript" else "float32"
        print(f"wrote {path} ({fmt}, network in {network}; input images [N, 3, {size}, {size}] {args.input_dtype} "
              f"BGR; outputs {outputs})")
    if args.verify:
        verify(model, files, read_images(args.verify, size), args.with_nms,
               static_batch=args.batch_size if args.static_batch else 0,
               reduced=("torchscript",) if precision.mixed else ())


if __name__ == "__main__":
    main()
