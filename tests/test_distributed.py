"""Two CPU processes (gloo) through detectron2's launch: same weights in both, same loss as one process."""
import json
import os

import pytest
import torch

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, launch
from detectron2.engine.launch import _find_free_port

import train_net
from conftest import ROOT
from mutual_guide.data import make_synthetic_dataset

CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yaml")
ITERS = 2
# Relative difference allowed between the 2-process and the 1-process loss of the same total batch. They are
# not equal: BatchNorm normalises each process's half batch with its own statistics, and the focal loss of each
# process is divided by that process's positives before the two are averaged.
LOSS_RTOL = 0.05


def _args(specs, output_dir):
    return default_argument_parser().parse_args([
        "--config-file", CONFIG,
        "OUTPUT_DIR", str(output_dir),
        "DATASETS.CUSTOM", str(specs),
        "DATASETS.TRAIN", "('dshapes_train',)",
        "DATASETS.TEST", "('dshapes_test',)",
        "MODEL.MUTUAL_GUIDE.NUM_CLASSES", "3",
        "INPUT.SIZE", "128",
        "INPUT.MG_AUGMENT", "False",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "4",  # the total over all processes, as in detectron2
        "SOLVER.MAX_ITER", str(ITERS),
        "SOLVER.WARMUP_ITERS", "1",
        # the seed's LR rule gives iteration 1 the whole BASE_LR; 0.005 keeps the step (and the tolerances below)
        # what detectron2's WarmupCosineLR gave it at 0.01
        "SOLVER.BASE_LR", "0.005",
        "MODEL.BACKBONE.NAME", "ResNet18",
        "MODEL.NECK.NAME", "FPN",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "TEST.EVAL_PERIOD", "0",
        "SEED", "7",
    ])


def _train(specs, output_dir):
    """Runs in every process: train, then save this process's parameters."""
    torch.set_num_threads(1)
    cfg = train_net.setup(_args(specs, output_dir))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.save(params, os.path.join(output_dir, f"params_rank{comm.get_rank()}_of{comm.get_world_size()}.pth"))


def _last_loss(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "total_loss" in r][-1]["total_loss"]


@pytest.fixture(scope="module")
def four_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("dshapes")
    return make_synthetic_dataset(str(root), fmt="coco", num_train=4, num_test=2, image_size=128, seed=3,
                                  name="dshapes")["custom_specs"]


def test_two_cpu_processes_train_like_one(four_images, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    launch(_train, 2, num_machines=1, machine_rank=0, dist_url=f"tcp://127.0.0.1:{_find_free_port()}",
           args=(four_images, str(two)))
    launch(_train, 1, args=(four_images, str(one)))

    rank0 = torch.load(two / "params_rank0_of2.pth")
    rank1 = torch.load(two / "params_rank1_of2.pth")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between the two processes"

    # Both runs start from the same weights (same SEED) and see the same 4 images per iteration.
    single = torch.load(one / "params_rank0_of1.pth")
    moved = max(float((single[k] - rank0[k]).abs().max()) for k in single)
    assert moved < 1e-2, f"2-process weights are {moved:.3g} away from the 1-process ones"
    loss_two, loss_one = _last_loss(two), _last_loss(one)
    print(f"2 processes: loss {loss_two:.5f}; 1 process: loss {loss_one:.5f}; max weight difference {moved:.3g}")
    assert loss_two == pytest.approx(loss_one, rel=LOSS_RTOL), (loss_two, loss_one)
