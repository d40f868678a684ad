#!/usr/bin/env python
"""
Sliced inference against whole-image inference on large images, side by side: accuracy and time per image.

Canvases of --sizes pixels (square) are filled with the demo dataset's images (mutual_guide.data
make_synthetic_dataset: circles, squares and triangles of 10-50% of an INPUT.SIZE image, with their background),
pasted at their trained size on a grey noise canvas, on a grid of INPUT.SIZE cells of which --fill are used,
each shifted by a random offset so that objects fall across tile borders too. One checkpoint (--weights, trained
on that dataset, e.g. by `make demo`: output/demo/model_final.pth) is evaluated by the predictor (demo.py's) in
three modes on the same canvases, with COCO's metric:

    whole        the canvas squashed to the network's input (TEST.SLICE.ENABLED False)
    tiles        overlapping INPUT.SIZE tiles only (TEST.SLICE.ENABLED True, WHOLE_IMAGE False)
    tiles+whole  the tiles and the whole-image pass (TEST.SLICE's defaults)

Prints one row per canvas size and mode: AP, AP50, APs (COCO's small objects, under 32 x 32 px), tiles per image
and seconds per image (the predictor's call only: no reading, no evaluation).

    .venv/bin/python benchmarks/bench_sliced.py --weights output/demo/model_final.pth
    .venv/bin/python benchmarks/bench_sliced.py --weights ... --sizes 1024 2048 4096 --canvases 4 --overlap 0.25
    .venv/bin/python benchmarks/bench_sliced.py --allow-random-weights --sizes 256 --canvases 2   # smoke test
"""
import argparse
import contextlib
import io
import json
import logging
import os
import tempfile
import time
import uuid

import cv2
import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from mutual_guide import add_mutual_guide_config
from mutual_guide.checkpoint.checkpointer import MutualGuideCheckpointer
from mutual_guide.data import make_synthetic_dataset, register_custom_datasets
from mutual_guide.engine.predictor import MutualGuidePredictor
from mutual_guide.engine.slicing import tile_layout
from mutual_guide.evaluation import build_dataset_evaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {  # name -> TEST.SLICE overrides
    "whole": {"ENABLED": False},
    "tiles": {"ENABLED": True, "WHOLE_IMAGE": False},
    "tiles+whole": {"ENABLED": True, "WHOLE_IMAGE": True},
}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "demo_shapes.yaml"))
    parser.add_argument("--weights", help="the trained checkpoint (MODEL.WEIGHTS)")
    parser.add_argument("--allow-random-weights", action="store_true", help="no --weights: an untrained network")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="canvas sides, pixels")
    parser.add_argument("--canvases", type=int, default=4, help="canvases per size")
    parser.add_argument("--fill", type=float, default=0.3, help="share of the canvas's grid cells holding an image")
    parser.add_argument("--overlap", type=float, default=0.25, help="TEST.SLICE.OVERLAP")
    parser.add_argument("--tile-size", type=int, default=0, help="TEST.SLICE.TILE_SIZE (0: INPUT.SIZE)")
    parser.add_argument("--work-dir", help="where canvases and evaluation files go (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def make_canvases(root, sizes, count, cell, fill, seed):
    """
    Write `count` canvases of each side in `sizes` and their COCO json; returns {side: DATASETS.CUSTOM spec}.
    Each used grid cell holds one generated cell x cell image with its objects, at a random offset inside its
    cell's neighbourhood (kept on the canvas and off the other pasted images).
    """
    rng = np.random.default_rng(seed)
    specs = {}
    for side in sizes:
        grid = side // (cell + cell // 4)  # cells a quarter larger than the images: room to shift them
        pitch = side // grid
        used = max(1, round(fill * grid * grid))
        source = make_synthetic_dataset(os.path.join(root, f"source_{side}"), fmt="coco", num_train=0,
                                        num_test=used * count, image_size=cell, seed=seed + side)
        with open(source["splits"]["test"]["json_file"]) as f:
            pasted = json.load(f)
        by_image = {}
        for a in pasted["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        folder = os.path.join(root, f"canvas_{side}")
        os.makedirs(folder, exist_ok=True)
        images, annotations = [], []
        for c in range(count):
            canvas = np.clip(rng.normal(128, 20, (side, side, 3)), 0, 255).astype(np.uint8)
            for k, flat in enumerate(rng.choice(grid * grid, size=used, replace=False).tolist()):
                record = pasted["images"][c * used + k]
                x = (flat % grid) * pitch + int(rng.integers(0, pitch - cell + 1))
                y = (flat // grid) * pitch + int(rng.integers(0, pitch - cell + 1))
                canvas[y:y + cell, x:x + cell] = cv2.imread(os.path.join(source["splits"]["test"]["image_root"],
                                                                         record["file_name"]))
                for a in by_image.get(record["id"], []):
                    bx, by, bw, bh = a["bbox"]
                    annotations.append({"id": len(annotations) + 1, "image_id": c + 1, "category_id": a["category_id"],
                                        "bbox": [bx + x, by + y, bw, bh], "area": bw * bh, "iscrowd": 0})
            file_name = f"{side}_{c:03d}.png"
            cv2.imwrite(os.path.join(folder, file_name), canvas)
            images.append({"id": c + 1, "file_name": file_name, "width": side, "height": side})
        json_file = os.path.join(root, f"canvas_{side}.json")
        with open(json_file, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": pasted["categories"]}, f)
        specs[side] = f"bench_sliced_{side}_{uuid.uuid4().hex[:6]}:coco:json={json_file};images={folder}"
    return specs


def evaluate(cfg, model, dataset_name, work_dir):
    """(COCO bbox results, seconds per image) of the predictor of `cfg` on every image of the dataset."""
    predictor = MutualGuidePredictor(cfg, model=model)
    if predictor.sliced is not None:
        predictor.sliced.progress = False  # the bar would cut through the table
    evaluator = build_dataset_evaluator(cfg, dataset_name, os.path.join(work_dir, "inference", dataset_name))
    evaluator.reset()
    seconds = 0.0
    records = DatasetCatalog.get(dataset_name)
    for record in records:
        image = cv2.imread(record["file_name"])
        start = time.perf_counter()
        instances = predictor(image)
        seconds += time.perf_counter() - start
        evaluator.process([record], [{"instances": instances.to("cpu")}])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' own tables: the summary below replaces them
        results = evaluator.evaluate()
    return results["bbox"], seconds / len(records)


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not args.weights and not args.allow_random_weights:
        raise SystemExit("give --weights (a checkpoint trained on the demo dataset), or --allow-random-weights")
    logging.basicConfig(level=logging.WARNING)
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.WEIGHTS = args.weights or ""
    cfg.TEST.SLICE.OVERLAP = args.overlap
    cfg.TEST.SLICE.TILE_SIZE = args.tile_size
    tile = args.tile_size or cfg.INPUT.SIZE

    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_sliced_"))
        cfg.OUTPUT_DIR = work_dir
        specs = make_canvases(work_dir, args.sizes, args.canvases, cfg.INPUT.SIZE, args.fill, args.seed)
        cfg.DATASETS.CUSTOM = list(specs.values())
        register_custom_datasets(cfg)

        torch.manual_seed(args.seed)
        model = build_model(cfg)
        MutualGuideCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        if cfg.MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE:
            model.fuse_for_inference()
        model.eval()

        print(f"config {os.path.relpath(args.config_file, ROOT)}, weights {args.weights or '(random)'}, "
              f"INPUT.SIZE {cfg.INPUT.SIZE}, tiles of {tile} px, overlap {args.overlap}, {args.canvases} canvas(es) "
              f"a size, {torch.get_num_threads()} thread(s), device {cfg.MODEL.DEVICE}")
        header = (f"{'canvas':>7} {'mode':<12} {'AP':>6} {'AP50':>6} {'APs':>6} {'tiles/img':>9} {'s/img':>8} "
                  f"{'x whole':>8}")
        print(header)
        print("-" * len(header))
        for side, spec in specs.items():
            name = spec.split(":", 1)[0]
            whole_time = None
            for mode, overrides in MODES.items():
                mode_cfg = cfg.clone()
                for key, value in overrides.items():
                    mode_cfg.TEST.SLICE[key] = value
                metrics, seconds = evaluate(mode_cfg, model, name, work_dir)
                tiles = len(tile_layout(side, side, tile, args.overlap)) if overrides["ENABLED"] else 0
                tiles += 1 if overrides.get("WHOLE_IMAGE", True) else 0
                whole_time = whole_time or seconds
                ap, ap50, aps = (f"{metrics[k]:6.1f}" if np.isfinite(metrics[k]) else f"{'-':>6}"
                                 for k in ("AP", "AP50", "APs"))  # no small object on the canvases: no APs
                print(f"{side:>7} {mode:<12} {ap} {ap50} {aps} {tiles:>9} {seconds:8.3f} {seconds / whole_time:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
