"""
Trajectory parity: the authors' model, optimiser, LR rule and loss (their main.py at fd2c4cc, re-created in
paper_loop.py around their modules) against what mutual_guide.engine.Trainer builds (build_model,
build_optimizer, build_lr_scheduler, detectron2's SimpleTrainer.run_step and the LR hook's scheduler.step), from
the same weights, on the same batches with augmentation off.

    .venv/bin/python parity/check_paper_trajectory.py --paper-repo <checkout> [--steps 50] [--iou]

1. Replay: before every step ours is given the paper side's weights, BatchNorm statistics and momentum buffers;
   both take the step; compared: the LR each used, both losses, the parameter update (|ours - paper| / |the
   paper side's update|, L2 over all parameters) and the BatchNorm statistics update. This pins the LR rule, the
   parameter groups and weight decay, momentum, BatchNorm and the loss at every step, to float tolerance.
2. Free run: both trajectories left to themselves, beside the paper side run from weights moved by a relative
   1e-7. Training from scratch is chaotic: the authors' code against itself drifts apart by about 1e-2 within a
   few steps, so a free run can only be expected to drift as much as that control does, not to agree to float
   tolerance.

Batches: our mapper with INPUT.MG_AUGMENT False (resize to S x S, cv2.INTER_LINEAR) on the generated shapes
dataset; the authors' code gets the same uint8 image minus its mean and the same boxes divided by S, labels + 1.
"""
import argparse
import copy
import os
import sys
import tempfile

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from mutual_guide.checkpoint.paper_keys import convert_paper_state_dict
from mutual_guide.data import MutualGuideDatasetMapper, make_synthetic_dataset
from mutual_guide.engine import Trainer, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_code import add_paper_repo_argument  # noqa: E402
from paper_loop import build_paper_model, paper_criterion, paper_lr, paper_optimizer  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_paper_repo_argument(parser)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--backbone", default="ShuffleNetV2")
    parser.add_argument("--neck", default="FPN")
    parser.add_argument("--iou", action="store_true", help="the IoU baseline instead of mutual guidance")
    return parser.parse_args()


def our_cfg(args, data):
    """The config train_net.py would build for this run (its setup(), from the command-line form)."""
    ns = argparse.Namespace(
        config_file=os.path.join(os.path.dirname(__file__), "..", "configs", "Base-MutualGuide.yaml"),
        eval_only=False, resume=False, num_gpus=1, opts=[
            "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", args.backbone, "MODEL.NECK.NAME", args.neck,
            "MODEL.BACKBONE.PRETRAINED", "", "MODEL.MUTUAL_GUIDE.ENABLED", str(not args.iou),
            "MODEL.MUTUAL_GUIDE.NUM_CLASSES", "3", "INPUT.SIZE", str(args.size), "INPUT.MG_AUGMENT", "False",
            "DATASETS.CUSTOM", str(data["custom_specs"]), "DATASETS.TRAIN", "('traj_train',)",
            "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.BASE_LR", str(args.lr),
            "SOLVER.MAX_ITER", str(args.steps), "SOLVER.WARMUP_ITERS", str(args.warmup),
            "OUTPUT_DIR", tempfile.mkdtemp(prefix="traj_"),
            # NCHW, the authors' layout: the NHWC kernels our CPU default runs in (CHANNELS_LAST_DEVICES) sum in
            # another order, which alone moves the loss by ~1e-5 and small updates by a few percent, and would
            # hide a real difference of the step behind float rounding
            "MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES", "[]",
        ],
    )
    return setup(ns)


def make_batches(cfg, args, data):
    """Fixed batches of the images that have objects (the authors' code pads an empty image with a dummy box)."""
    mapper = MutualGuideDatasetMapper(cfg, is_train=True)
    samples = [mapper(d) for d in DatasetCatalog.get("traj_train") if d["annotations"]]
    mean = torch.tensor([104.0, 117.0, 123.0]).view(3, 1, 1)
    batches = []
    for step in range(args.steps):
        ours = [samples[(step * args.batch + i) % len(samples)] for i in range(args.batch)]
        images = torch.stack([s["image"].float() - mean for s in ours])
        targets = [torch.cat([s["instances"].gt_boxes.tensor / args.size,
                              s["instances"].gt_classes.float().unsqueeze(1) + 1], 1) for s in ours]
        batches.append((ours, images, targets))
    return batches


class Paper:
    """The authors' side: their model, their main.py's optimiser and LR rule, their loss."""

    def __init__(self, args, model):
        self.args, self.model = args, model
        self.optimizer = paper_optimizer(model, args.lr)
        self.criterion, self.priors = paper_criterion(args.paper_repo, 3, args.size, mutual_guide=not args.iou)

    def step(self, step, images, targets):
        """main.py's order: LR, forward, loss, zero_grad, backward, step. Returns (LR, loss_cls, loss_box_reg)."""
        lr = paper_lr(self.args.lr, step, self.args.warmup, self.args.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_l, loss_c = self.criterion(self.model(images), self.priors, targets)
        self.optimizer.zero_grad()
        (loss_l + loss_c).backward()
        self.optimizer.step()
        return lr, loss_c.item(), loss_l.item()


class Ours:
    """mutual_guide.engine.Trainer's side: its model, optimiser, scheduler and detectron2's SimpleTrainer step."""

    def __init__(self, cfg, batches):
        self.model = Trainer.build_model(cfg).train()
        self.optimizer = Trainer.build_optimizer(cfg, self.model)
        self.scheduler = Trainer.build_lr_scheduler(cfg, self.optimizer)
        self.trainer = SimpleTrainer(self.model, iter([b[0] for b in batches]), self.optimizer)

    def load(self, paper):
        """The paper side's weights, BatchNorm statistics and momentum buffers, by parameter name."""
        self.model.load_state_dict(convert_paper_state_dict(paper.model.state_dict()))
        paper_params = convert_paper_state_dict(dict(paper.model.named_parameters()))
        for name, param in self.model.named_parameters():
            state = paper.optimizer.state.get(paper_params[name], {})
            if "momentum_buffer" in state:
                self.optimizer.state[param]["momentum_buffer"] = state["momentum_buffer"].clone()

    def step(self, step, storage):
        """What Trainer.train runs in an iteration: run_step, then the LR hook's scheduler.step()."""
        lrs = {group["lr"] for group in self.optimizer.param_groups}
        self.trainer.iter = storage.iter = step
        self.trainer.run_step()
        self.scheduler.step()
        latest = storage.latest()
        return lrs, latest["loss_cls"][0], latest["loss_box_reg"][0]


def snapshot(model):
    """Parameters and floating buffers in our names, copied."""
    return {k: v.detach().clone() for k, v in convert_paper_state_dict(model.state_dict()).items()
            if v.is_floating_point()}


def relative_change_difference(before, after_paper, after_ours, keys):
    """|ours' change - the paper side's change| / |the paper side's change|, L2 over all `keys` together."""
    diff = sum(float((after_ours[k] - after_paper[k]).double().pow(2).sum()) for k in keys)
    change = sum(float((after_paper[k] - before[k]).double().pow(2).sum()) for k in keys)
    return (diff / max(change, 1e-300)) ** 0.5


def rel(a, b):
    return abs(a / b - 1)


def replay(args, cfg, batches, paper_model):
    """Each step from the paper side's state: ours is given its weights, statistics and momentum first."""
    paper, ours = Paper(args, paper_model), Ours(cfg, batches)
    params = [k for k, _ in ours.model.named_parameters()]
    buffers = [k for k in snapshot(ours.model) if k not in set(params)]
    worst = {"lr": 0.0, "loss": 0.0, "params": 0.0, "buffers": 0.0}
    with EventStorage(0) as storage:
        for step, (_, images, targets) in enumerate(batches):
            ours.load(paper)
            before = snapshot(paper.model)
            lr, paper_cls, paper_box = paper.step(step, images, targets)
            our_lrs, our_cls, our_box = ours.step(step, storage)
            after_paper, after_ours = snapshot(paper.model), snapshot(ours.model)
            row = {
                "lr": max(rel(x, lr) for x in our_lrs),
                "loss": max(rel(our_cls, paper_cls), rel(our_box, paper_box)),
                "params": relative_change_difference(before, after_paper, after_ours, params),
                "buffers": relative_change_difference(before, after_paper, after_ours, buffers),
            }
            worst = {k: max(worst[k], row[k]) for k in worst}
            if step % 10 == 0 or step == len(batches) - 1:
                print(f"  step {step:3d} lr {lr:.3e} loss_cls {paper_cls:.5f} / {our_cls:.5f}  loss_box_reg "
                      f"{paper_box:.5f} / {our_box:.5f}  relative differences: lr {row['lr']:.1e} loss "
                      f"{row['loss']:.1e} parameter update {row['params']:.1e} BatchNorm update {row['buffers']:.1e}")
    return worst


def free_run(args, cfg, batches, paper_model):
    """Both trajectories left to themselves, beside the paper side against itself with its weights moved by 1e-7."""
    torch.manual_seed(1)
    control_model = copy.deepcopy(paper_model)
    with torch.no_grad():
        for p in control_model.parameters():
            p.mul_(1 + 1e-7 * torch.randn_like(p))
    paper, control, ours = Paper(args, paper_model), Paper(args, copy.deepcopy(control_model)), Ours(cfg, batches)
    ours.load(paper)
    worst_ours, worst_control = 0.0, 0.0
    with EventStorage(0) as storage:
        for step, (_, images, targets) in enumerate(batches):
            _, paper_cls, paper_box = paper.step(step, images, targets)
            _, ctl_cls, ctl_box = control.step(step, images, targets)
            _, our_cls, our_box = ours.step(step, storage)
            d_ours = max(rel(our_cls, paper_cls), rel(our_box, paper_box))
            d_ctl = max(rel(ctl_cls, paper_cls), rel(ctl_box, paper_box))
            worst_ours, worst_control = max(worst_ours, d_ours), max(worst_control, d_ctl)
            if step % 10 == 0 or step == len(batches) - 1:
                print(f"  step {step:3d} loss_cls paper {paper_cls:.5f} ours {our_cls:.5f} perturbed paper "
                      f"{ctl_cls:.5f}  relative loss difference ours {d_ours:.1e}, perturbed paper {d_ctl:.1e}")
    final = {}
    for name, model in (("ours", ours.model), ("perturbed paper", control.model)):
        a, b = snapshot(paper.model), snapshot(model)
        final[name] = max((a[k] - b[k]).abs().max().item() / max(a[k].abs().max().item(), 1e-3) for k in a)
    return worst_ours, worst_control, final


def main():
    args = parse_args()
    torch.manual_seed(0)
    data = make_synthetic_dataset(tempfile.mkdtemp(prefix="traj_data_"), "coco", num_train=24, num_test=1,
                                  image_size=args.size, name="traj")
    cfg = our_cfg(args, data)
    batches = make_batches(cfg, args, data)
    paper_model = build_paper_model(args.paper_repo, args.size, 3, args.backbone, args.neck).train()
    start = copy.deepcopy(paper_model)
    what = f"{'IoU baseline' if args.iou else 'mutual guidance'}, {args.backbone}-{args.neck} {args.size}, " \
           f"{args.steps} steps of batch {args.batch}, LR {args.lr}, {args.warmup} warm-up"
    print(f"{what}\n1. replay: every step from the paper side's state (weights, BatchNorm statistics, momentum)")
    worst = replay(args, cfg, batches, paper_model)
    print(f"  largest relative differences over {args.steps} steps: LR {worst['lr']:.1e}, loss {worst['loss']:.1e}, "
          f"parameter update {worst['params']:.1e}, BatchNorm statistics update {worst['buffers']:.1e}")
    print("2. free run from the same weights, against the paper side run from weights moved by 1e-7 (relative)")
    worst_ours, worst_control, final = free_run(args, cfg, batches, start)
    print(f"  largest relative loss difference: ours {worst_ours:.1e}, perturbed paper {worst_control:.1e}; "
          f"weights after {args.steps} steps, largest difference relative to each tensor's largest value: "
          f"ours {final['ours']:.1e}, perturbed paper {final['perturbed paper']:.1e}")
    ok = worst["lr"] < 1e-9 and worst["loss"] < 1e-5 and worst["params"] < 1e-3 and worst["buffers"] < 1e-3
    ok = ok and worst_ours <= 10 * max(worst_control, 1e-6)
    print("  ->", "AGREE" if ok else "DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
