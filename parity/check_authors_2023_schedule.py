"""
Our solver against the authors' current learning-rate rule (utils/lr_scheduler.py `adjust_learning_rate` at
108b4a8, called by their train.py before every step with warm_iter 500 and min_lr_ratio 0.05), at every iteration
of a run: SOLVER.LR_SCHEDULER_NAME "WarmupCosineFloorLR" with SOLVER.BASE_LR_END = 0.05 * SOLVER.BASE_LR.

    .venv/bin/python parity/check_authors_2023_schedule.py --authors-repo DIR [--max-iter 51700]

The default run is their VOC schedule: 100 epochs of floor(16551 / 32) iterations.
"""
import argparse
import os
import sys

import torch

from detectron2.config import get_cfg

import mutual_guide
from mutual_guide.solver import build_lr_scheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_2023_code import add_authors_repo_argument, load_authors_module  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_authors_repo_argument(parser)
    parser.add_argument("--max-iter", type=int, default=100 * (16551 // 32))
    parser.add_argument("--base-lr", type=float, default=0.01)
    parser.add_argument("--warm-iter", type=int, default=500)
    args = parser.parse_args()
    theirs = load_authors_module(args.authors_repo, "utils/lr_scheduler.py")

    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-MutualGuide.yaml"))
    cfg.SOLVER.BASE_LR, cfg.SOLVER.BASE_LR_END = args.base_lr, 0.05 * args.base_lr
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER = args.warm_iter, args.max_iter
    ours = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.base_lr)
    scheduler = build_lr_scheduler(cfg, ours)
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.base_lr)
    worst, worst_at = 0.0, 0
    for i in range(args.max_iter):
        expected = theirs.adjust_learning_rate(reference, args.base_lr, i, args.warm_iter, args.max_iter)
        got = ours.param_groups[0]["lr"]
        if abs(got - expected) / expected > worst:
            worst, worst_at = abs(got - expected) / expected, i
        ours.step()
        scheduler.step()
    print(f"{args.max_iter} iterations, BASE_LR {args.base_lr}, BASE_LR_END {0.05 * args.base_lr}, warm-up "
          f"{args.warm_iter}: largest relative difference {worst:.3g} (iteration {worst_at})")
    ok = worst < 1e-9
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
