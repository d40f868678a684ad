"""
The paper's learning-rate rule on detectron2's solver pieces.

The paper's code (main.py at fd2c4cc, `adjust_learning_rate`) sets, before the step of iteration i,

    lr(i) = floor + (base - floor) * i / warm                                          i <= warm
    lr(i) = floor + (base - floor) * (1 + cos(pi * (i - warm) / (max_iter - warm))) / 2  i > warm

with floor = 1e-6: a linear warm-up that starts *at the floor* (not at a fraction of the base LR), and a cosine
that spans only the iterations after warm-up and ends at the floor, not at zero. detectron2's WarmupCosineLR
runs its cosine over all iterations unless SOLVER.RESCALE_INTERVAL, and starts its warm-up at
WARMUP_FACTOR * BASE_LR, a fraction that would have to change with every BASE_LR to start at 1e-6. So
"WarmupCosineFloorLR" is detectron2's own WarmupParamScheduler + CosineParamScheduler + LRMultiplier, with the
warm-up factor tied to SOLVER.BASE_LR_END and the interval always rescaled. Any other name goes to detectron2.

Parameter groups and weight decay need nothing of ours: detectron2's `get_default_optimizer_params` with
WEIGHT_DECAY_NORM = WEIGHT_DECAY_BIAS = 0 gives exactly the paper's `tencent_trick` groups (no decay on 1-D
tensors and biases) for every backbone and neck of this project; tests/test_solver.py checks that.
"""
from fvcore.common.param_scheduler import CosineParamScheduler, LinearParamScheduler

from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler

__all__ = ["PAPER_LR_SCHEDULER", "build_lr_scheduler"]

PAPER_LR_SCHEDULER = "WarmupCosineFloorLR"


def build_lr_scheduler(cfg, optimizer):
    """SOLVER.LR_SCHEDULER_NAME "WarmupCosineFloorLR" (the paper's rule, above) or any of detectron2's names."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != PAPER_LR_SCHEDULER:
        return build_detectron2_lr_scheduler(cfg, optimizer)
    base, floor, warm, max_iter = (
        cfg.SOLVER.BASE_LR, cfg.SOLVER.BASE_LR_END, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER
    )
    if not 0.0 <= floor <= base:
        raise ValueError(
            f"{PAPER_LR_SCHEDULER} needs 0 <= SOLVER.BASE_LR_END <= SOLVER.BASE_LR, got BASE_LR_END={floor} "
            f"and BASE_LR={base}"
        )
    if warm < 0:
        raise ValueError(f"{PAPER_LR_SCHEDULER} needs SOLVER.WARMUP_ITERS >= 0, got {warm}")
    floor_factor = floor / base
    if warm >= max_iter:
        # A run shorter than its warm-up (a smoke test, say) stays on the paper's warm-up line, as main.py would:
        # lr(i) = floor + (base - floor) * i / warm for every i < max_iter.
        reached = floor_factor + (1.0 - floor_factor) * max_iter / warm if warm else 1.0
        return LRMultiplier(optimizer, multiplier=LinearParamScheduler(floor_factor, reached), max_iter=max_iter)
    schedule = WarmupParamScheduler(
        CosineParamScheduler(1.0, floor_factor),
        warmup_factor=floor_factor,
        warmup_length=warm / max_iter,
        warmup_method=cfg.SOLVER.WARMUP_METHOD,
        rescale_interval=True,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=max_iter)
