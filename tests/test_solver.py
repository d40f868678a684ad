"""The training loop's pieces against the rules of the authors' code (main.py at fd2c4cc), written out here as
plain formulas."""
import math

import pytest
import torch
from train_net import Trainer

from detectron2.modeling import build_model

PAPER_FLOOR = 1e-6  # main.py: the warm-up starts there and the cosine ends there


def paper_lr(base, i, warm, max_iter):
    """main.py's adjust_learning_rate, as read."""
    if i <= warm:
        return PAPER_FLOOR + (base - PAPER_FLOOR) * i / warm
    return PAPER_FLOOR + (base - PAPER_FLOOR) * 0.5 * (1 + math.cos((i - warm) * math.pi / (max_iter - warm)))


def lrs_of(cfg, iterations):
    """The LR of every parameter group at the given iterations, stepping the scheduler as detectron2's hook does."""
    model = torch.nn.Linear(2, 2)
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    out = {}
    for i in range(max(iterations) + 1):
        if i in iterations:
            out[i] = {group["lr"] for group in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("base_lr", [0.01, 0.0025])
def test_lr_follows_the_papers_formula(base_lr, make_cfg):
    cfg = make_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER = base_lr, 100, 600
    iterations = [0, 1, 50, 99, 100, 101, 350, 598, 599]
    for i, lrs in lrs_of(cfg, iterations).items():
        assert len(lrs) == 1, lrs
        assert lrs.pop() == pytest.approx(paper_lr(base_lr, i, 100, 600), rel=1e-12, abs=0), i
    # the points that differ from detectron2's WarmupCosineLR: an absolute 1e-6 start whatever the base LR,
    # the full base LR at the end of warm-up, the 1e-6 floor at the end
    at = lrs_of(cfg, [0, 100, 599])
    assert at[0] == {1e-6}
    assert at[100] == {base_lr}
    assert at[599].pop() == pytest.approx(1e-6 + (base_lr - 1e-6) * 0.5 * (1 + math.cos(499 * math.pi / 500)))


def authors_2023_lr(base, i, warm, max_iter, min_lr_ratio=0.05):
    """utils/lr_scheduler.py's adjust_learning_rate at 108b4a8 (the authors' current code), as read."""
    start = base * min_lr_ratio
    if i <= warm:
        return start + (base - start) * i / warm
    return start + (base - start) * 0.5 * (1.0 + math.cos(math.pi * (i - warm) / (max_iter - warm)))


def test_the_authors_2023_schedule_is_the_floor_rule_at_five_percent(make_cfg):
    """Their current code's warm-up starts, and its cosine ends, at 5% of the LR: BASE_LR_END = 0.05 * BASE_LR."""
    cfg = make_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.BASE_LR_END, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER = 0.01, 5e-4, 500, 3000
    iterations = [0, 1, 250, 499, 500, 501, 1750, 2998, 2999]
    got = lrs_of(cfg, iterations)
    for i in iterations:
        assert got[i].pop() == pytest.approx(authors_2023_lr(0.01, i, 500, 3000), rel=1e-12, abs=0), i
    assert authors_2023_lr(0.01, 0, 500, 3000) == pytest.approx(5e-4)  # not the paper's 1e-6
    assert authors_2023_lr(0.01, 250, 500, 3000) == pytest.approx(0.00525)


def test_run_shorter_than_its_warm_up_stays_on_the_warm_up_line(make_cfg):
    cfg = make_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER = 0.01, 500, 20
    for i, lrs in lrs_of(cfg, [0, 1, 10, 19]).items():
        assert lrs.pop() == pytest.approx(paper_lr(0.01, i, 500, 20), rel=1e-9), i


@pytest.mark.parametrize("name", ["WarmupCosineLR", "WarmupMultiStepLR"])
def test_detectron2_schedulers_are_left_to_detectron2(name, make_cfg):
    from detectron2.solver import build_lr_scheduler

    cfg = make_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME, cfg.SOLVER.STEPS = name, (60,)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_FACTOR = 0.01, 10, 100, 1e-3
    iterations = [0, 5, 50, 70, 99]
    ours = lrs_of(cfg, iterations)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for i in range(max(iterations) + 1):
        if i in iterations:
            (lr,) = ours[i]
            assert lr == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9), i
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(
    "key, value, message",
    [("BASE_LR_END", 0.02, "BASE_LR_END"), ("WARMUP_ITERS", -1, "WARMUP_ITERS")],
)


def test_bad_schedule_is_refused_naming_the_key(key, value, message, make_cfg):
    cfg = make_cfg()
    cfg.SOLVER.MAX_ITER = 600
    setattr(cfg.SOLVER, key, value)
    with pytest.raises(ValueError, match=message):
        lrs_of(cfg, [0])


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["VGG16", "ResNet18", "RepVGG", "ShuffleNetV2"])
def test_parameter_groups_are_the_papers(backbone, make_cfg):
    """main.py's tencent_trick: no weight decay on 1-D tensors and on names ending in '.bias'; SGD momentum 0.9."""
    for neck in ("SSD", "FPN", "PAFPN", "RFB"):
        model = build_model(make_cfg(backbone, neck, size=320, num_classes=20))
        optimizer = Trainer.build_optimizer(make_cfg(backbone, neck, size=320, num_classes=20), model)
        decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        assert all(group["momentum"] == 0.9 and not group["nesterov"] for group in optimizer.param_groups)
        assert len(decay) == len(list(model.parameters()))
        for name, param in model.named_parameters():
            expected = 0.0 if param.ndim == 1 or name.endswith(".bias") else 5e-4
            assert decay[id(param)] == expected, (backbone, neck, name)
