"""
Two CPU processes (gloo) through detectron2's launch train as one process on the same total batch: the loss
normalisers (numbers of positives) are summed over processes, so DDP's averaged gradient is the one-process one.
BatchNorm is frozen here: its batch statistics are per process without SyncBatchNorm, which needs CUDA.
"""
import json
import os

import pytest
import torch
import train_net

import detectron2.utils.comm as comm
from detectron2.engine import launch
from detectron2.engine.launch import _find_free_port
from detectron2.layers import FrozenBatchNorm2d

from mutual_guide.data import make_synthetic_dataset

ITERS = 2


# Beyond train_args' small CPU run: the whole batch of 4 (the total over all processes, as in detectron2), and the
# authors' LR rule gives iteration 1 the whole BASE_LR; 0.005 keeps the step (and the tolerances below) what
# detectron2's WarmupCosineLR gave it at 0.01.
# The average of the weights (MODEL_EMA, decay 0.5 so that it differs from the weights) is kept in every process.
OPTS = ("SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", ITERS, "SOLVER.WARMUP_ITERS", 1, "SOLVER.BASE_LR", 0.005,
        "SOLVER.CHECKPOINT_PERIOD", 1000, "SEED", 7, "MODEL_EMA.ENABLED", True, "MODEL_EMA.DECAY", 0.5,
        "MODEL_EMA.RAMP_ITERS", 0)


class FrozenBatchNormTrainer(train_net.Trainer):
    @classmethod
    def build_model(cls, cfg):
        return FrozenBatchNorm2d.convert_frozen_batchnorm(super().build_model(cfg))


def _train(argv, output_dir):
    """Runs in every process: train (train_net's command line `argv`), then save this process's parameters."""
    torch.set_num_threads(1)
    cfg = train_net.setup(train_net.argument_parser().parse_args(argv))
    trainer = FrozenBatchNormTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    if comm.get_rank() == 0:
        torch.save({k: v.detach().clone() for k, v in model.named_parameters()},
                   os.path.join(output_dir, "params_initial.pth"))
    trainer.train()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.save(params, os.path.join(output_dir, f"params_rank{comm.get_rank()}_of{comm.get_world_size()}.pth"))
    averages = {k: v.detach().clone() for k, v in trainer.ema.model.named_parameters()}
    torch.save(averages, os.path.join(output_dir, f"ema_rank{comm.get_rank()}_of{comm.get_world_size()}.pth"))
    if torch.distributed.is_initialized():  # gloo's threads end before the process does (an abort otherwise)
        comm.synchronize()
        torch.distributed.destroy_process_group()


def _last_loss(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "total_loss" in r][-1]["total_loss"]


@pytest.fixture(scope="module")
def four_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("dshapes")
    return make_synthetic_dataset(str(root), fmt="coco", num_train=4, num_test=2, image_size=128, seed=3,
                                  name="dshapes")


@pytest.mark.slow
def test_two_cpu_processes_train_like_one(four_images, tmp_path, train_args):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    launch(_train, 2, num_machines=1, machine_rank=0, dist_url=f"tcp://127.0.0.1:{_find_free_port()}",
           args=(train_args(four_images, two, *OPTS, as_argv=True), str(two)))
    launch(_train, 1, args=(train_args(four_images, one, *OPTS, as_argv=True), str(one)))

    rank0 = torch.load(two / "params_rank0_of2.pth")
    rank1 = torch.load(two / "params_rank1_of2.pth")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between the two processes"

    # Both runs start from the same weights (same SEED) and see the same 4 images per iteration.
    single = torch.load(one / "params_rank0_of1.pth")
    initial = torch.load(two / "params_initial.pth")
    moved = max(float((single[k] - initial[k]).abs().max()) for k in single)
    apart = max(float((single[k] - rank0[k]).abs().max()) for k in single)
    loss_two, loss_one = _last_loss(two), _last_loss(one)
    print(f"2 processes: loss {loss_two:.7f}; 1 process: loss {loss_one:.7f}; weights moved up to {moved:.3g}, "
          f"2 vs 1 process up to {apart:.3g}")
    assert moved > 1e-4  # training did move the weights
    # the same arithmetic up to the order of float32 sums
    assert apart < 1e-3 * moved, f"2-process weights are {apart:.3g} away from the 1-process ones"
    assert loss_two == pytest.approx(loss_one, rel=1e-5), (loss_two, loss_one)

    # the average: the same in both processes without any communication, and the one-process one
    ema0, ema1, ema_single = (torch.load(d / f"ema_rank{r}_of{w}.pth") for d, r, w in ((two, 0, 2), (two, 1, 2),
                                                                                          (one, 0, 1)))
    for key in ema0:
        assert torch.equal(ema0[key], ema1[key]), f"the average of {key} differs between the two processes"
    assert max(float((ema_single[k] - ema0[k]).abs().max()) for k in ema0) < 1e-3 * moved
    assert any(not torch.equal(ema0[k], rank0[k]) for k in ema0)  # an average, not the weights
