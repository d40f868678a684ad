"""
The same accuracy at the same budget: the authors' training loop (paper_loop.py: their main.py's loop around
their own model, preproc, loss, optimiser and LR rule, on the CPU) and our train_net.py, trained on the same data
with the same budget and both evaluated by our `train_net.py --eval-only` (the authors' state dict loads through
our checkpointer), for one assignment. Prints AP, AP50, AP75 of both.

    # real photographs (see tools/make_tree_tiles.py), 600 iterations
    .venv/bin/python parity/train_side_by_side.py --paper-repo <checkout> --data datasets/trees --side both \\
        --iters 600 --batch 8 --lr 0.0025 --warmup 100 --size 320 [--iou] [--seed 0]
    # the demo's generated shapes (written under --data if it does not exist)
    .venv/bin/python parity/train_side_by_side.py --paper-repo <checkout> --data output/sbs_shapes --synthetic \\
        --side both --iters 400 --batch 16 --lr 0.04 --warmup 50 --size 128

--data is a COCO-json folder: annotations/{train,test}.json and images/. Training images without objects are
left out on both sides (paper_loop.py says why).
--side both trains the authors' loop, then ours; --side paper and --side ours in two processes run them at once
(each with --threads; `--side seed` is the old name of `--side paper`); --eval-only re-scores what OUTPUT holds.
--seed is the random seed of both sides.
Both sides start from scratch unless --pretrained names torchvision's ImageNet file of the backbone (for
ShuffleNetV2, shufflenetv2_x1-5666bf0f80.pth), which the authors' code always loads: nothing is downloaded.
At 600 iterations from scratch neither side learns the default tree tiles (AP under 1); the within-image split
of tools/make_tree_tiles.py is one both learn.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_code import add_paper_repo_argument  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_paper_repo_argument(parser)
    parser.add_argument("--data", required=True, help="COCO-json folder: annotations/{train,test}.json, images/")
    parser.add_argument("--synthetic", action="store_true", help="write the demo's generated dataset into --data")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "side_by_side"))
    parser.add_argument("--side", choices=("paper", "ours", "both", "seed"), default="both",
                        help="paper: the authors' loop (`seed`: its old name); ours: train_net.py; both: the authors' "
                        "loop, then ours")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--iou", action="store_true", help="the IoU baseline instead of mutual guidance")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.0025)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--backbone", default="ShuffleNetV2")
    parser.add_argument("--neck", default="FPN")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the random seed of both sides")
    parser.add_argument("--pretrained", default="",
                        help="torchvision's ImageNet weights of the backbone (a .pth file on disk) for both sides, as "
                             "the authors' code loads them; default: both from scratch")
    args = parser.parse_args()
    if args.side == "seed":
        args.side = "paper"
    return args


def dataset_specs(data):
    return [f"sbs_train:coco:json={data}/annotations/train.json;images={data}/images",
            f"sbs_test:coco:json={data}/annotations/test.json;images={data}/images"]


def common_opts(args, num_classes):
    return [
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", args.backbone, "MODEL.NECK.NAME", args.neck,
        "MODEL.BACKBONE.PRETRAINED", args.pretrained, "MODEL.MUTUAL_GUIDE.ENABLED", str(not args.iou),
        "MODEL.MUTUAL_GUIDE.NUM_CLASSES", str(num_classes), "INPUT.SIZE", str(args.size),
        "DATASETS.CUSTOM", json.dumps(dataset_specs(args.data)), "DATASETS.TRAIN", "('sbs_train',)",
        "DATASETS.TEST", "('sbs_test',)",
    ]


def run(cmd, log, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def train_ours(args, out, num_classes):
    opts = common_opts(args, num_classes) + [
        # the images without objects are left out on both sides (see train_paper)
        "DATASETS.TEST", "()", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True",
        "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.BASE_LR", str(args.lr),
        "SOLVER.MAX_ITER", str(args.iters), "SOLVER.WARMUP_ITERS", str(args.warmup),
        "SOLVER.CHECKPOINT_PERIOD", str(10**9), "DATALOADER.NUM_WORKERS", str(args.workers),
        "SEED", str(args.seed), "OUTPUT_DIR", out,
    ]
    run([sys.executable, "train_net.py", "--config-file", "configs/Base-MutualGuide.yaml", *opts],
        os.path.join(out, "train.log"), args.threads)
    return os.path.join(out, "model_final.pth")


def train_paper(args, out, num_classes):
    """The authors' loop in this process (paper_loop.py), on our loader's records of the training split."""
    from paper_loop import train_paper_loop

    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    import mutual_guide
    from mutual_guide.data import register_custom_datasets

    torch.set_num_threads(args.threads)
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.DATASETS.CUSTOM = dataset_specs(args.data)
    register_custom_datasets(cfg)
    # The authors' preproc gives an image without objects a zero-size dummy box, whose box target is -inf (NaN
    # losses); their own datasets never have such images (COCO's are filtered out), so neither side trains on them.
    dicts = [d for d in DatasetCatalog.get("sbs_train") if d["annotations"]]
    model = train_paper_loop(
        args.paper_repo, dicts, size=args.size, num_classes=num_classes, backbone=args.backbone, neck=args.neck,
        mutual_guide=not args.iou, base_lr=args.lr, warm_iter=args.warmup, max_iter=args.iters, batch=args.batch,
        workers=args.workers, seed=args.seed, pretrained=args.pretrained,
    )
    path = os.path.join(out, "model_paper.pth")
    torch.save(model.state_dict(), path)
    return path


def evaluate(args, weights, out, num_classes):
    """Our --eval-only path on the test split; returns {"AP", "AP50", "AP75"}."""
    log = os.path.join(out, "eval.log")
    opts = common_opts(args, num_classes) + ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", os.path.join(out, "eval")]
    run([sys.executable, "train_net.py", "--config-file", "configs/Base-MutualGuide.yaml", "--eval-only", *opts],
        log, args.threads)
    with open(log) as f:
        text = f.read()
    names, values = re.findall(r"copypaste: (AP,AP50,AP75.*)\n.*copypaste: ([-\d.,na]+)", text)[-1]
    result = dict(zip(names.split(","), (float(v) for v in values.split(","))))
    return {k: result[k] for k in ("AP", "AP50", "AP75")}


def main():
    args = parse_args()
    args.data = os.path.abspath(args.data)
    if args.synthetic and not os.path.isdir(os.path.join(args.data, "annotations")):
        from mutual_guide.data import make_synthetic_dataset

        make_synthetic_dataset(args.data, "coco", num_train=400, num_test=60, image_size=args.size, seed=0)
    with open(os.path.join(args.data, "annotations", "train.json")) as f:
        num_classes = len(json.load(f)["categories"])
    tag = f"{'iou' if args.iou else 'mg'}_seed{args.seed}"
    sides = ("paper", "ours") if args.side == "both" else (args.side,)
    results = {}
    for side in sides:
        out = os.path.join(args.output, f"{side}_{tag}")
        os.makedirs(out, exist_ok=True)
        weights = os.path.join(out, "model_paper.pth" if side == "paper" else "model_final.pth")
        if not args.eval_only:
            start = time.perf_counter()
            weights = (train_paper if side == "paper" else train_ours)(args, out, num_classes)
            print(f"[{side}] trained {args.iters} iterations in {time.perf_counter() - start:.0f} s", flush=True)
        results[side] = evaluate(args, weights, out, num_classes)
        print(f"[{side}] {'IoU baseline' if args.iou else 'mutual guidance'} seed {args.seed}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in results[side].items()), flush=True)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(results[side], f)
    if len(results) == 2:
        gap = results["ours"]["AP"] - results["paper"]["AP"]
        print(f"AP ours - the authors' loop: {gap:+.2f} ({'within' if abs(gap) <= 1 else 'outside'} 1 point)")


if __name__ == "__main__":
    main()
