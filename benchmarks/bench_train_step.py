"""
A whole training step (forward, assignment, losses, backward, SGD update) of the same network from the same
weights on the same batch: this project's step against the paper's way of doing it, timed alternately in one run.
Prints the best time of each side, where each side's time goes, and the ratio; the bar is 1.3x.

ours:         `model(batch)` as the trainer calls it: the network in the layout MODEL.MUTUAL_GUIDE.
              CHANNELS_LAST_DEVICES gives it (NHWC on the CPU), the batched assignment, the fused focal loss;
              "ours, phased" makes the same calls with timers between them, for the split.
paper-style:  the same network in PyTorch's default NCHW layout (the paper's code), labels from a loop over
              images and objects (mutual_guide/utils/oracle.py, the per-object reference the tests trust) and
              the losses computed as the authors' MultiBoxLoss does: a dense one-hot target over every anchor
              and class and the focal loss through autograd, with the authors' ignore rule.
ours, mixed:  `model(batch)` under MODEL.PRECISION's autocast (--precision, default "auto": bfloat16 where the
              CPU runs it faster than float32, see mutual_guide/engine/precision.py), losses in float32.
authors':     with --paper-repo DIR (a checkout of zhanghengdev/MutualGuide at fd2c4cc, see parity/README.md),
              the authors' own MultiBoxLoss on the NCHW network instead of the paper-style re-implementation;
              also timed.

    .venv/bin/python benchmarks/bench_train_step.py [--paper-repo <checkout>] [--batch 16] [--num-classes 80]
        [--precision auto|bfloat16|float16|float32] [--device cpu|cuda]

--device runs every side there (default: the GPU when there is one; the authors' `.cuda()` calls then reach it).
"""
import argparse
import contextlib
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F
from bench_assignment import random_ground_truth  # the same scenes as the assignment benchmark
from device_timing import device_description, synchronizer

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mutual_guide import add_mutual_guide_config
from mutual_guide.engine.precision import PRECISIONS, resolve_precision
from mutual_guide.modeling.batching import batch_ground_truth
from mutual_guide.modeling.losses import balanced_l1_loss
from mutual_guide.utils import oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "parity"))
from paper_code import PAPER_REPO_HELP, add_paper_repo_argument, set_paper_device  # noqa: E402
from check_paper_loss import load_paper_loss  # noqa: E402  (the authors' MultiBoxLoss, runnable on the CPU)


def make_cfg(backbone, neck, size, num_classes):
    """A CPU config of the given network, every other key at the project's default."""
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-MutualGuide.yaml"))  # the detector every config builds
    cfg.MODEL.BACKBONE.PRETRAINED = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.NECK.NAME = backbone, neck
    cfg.INPUT.SIZE, cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = size, num_classes
    return cfg


def make_batch(batch, size, num_classes, seed=0):
    """Random images with 5-10 boxes of 10-122 px each (at 320), as the trainer's data loader hands them over."""
    g = torch.Generator().manual_seed(seed)
    instances = random_ground_truth(batch, size, num_classes, (5, 10), g)
    return [{"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g), "instances": x}
            for x in instances]


def paper_style_losses(model, logits, deltas, batch):
    """Per-object labels, then a one-hot target over all anchors and classes, as the authors' MultiBoxLoss."""
    size, device = model.input_size, logits.device
    boxes = [x["instances"].gt_boxes.tensor.to(device) for x in batch]
    classes = [x["instances"].gt_classes for x in batch]
    mutual_guidance = model.anchor_matcher.uses_predictions
    pred_boxes = model.decode_boxes(deltas.detach()).cpu() / size if mutual_guidance else None
    # IoUs relative to the image side, as the authors' code (and ours) measure them; the per-object loop runs on
    # the CPU (on a GPU run, its inputs and labels cross over, as part of this side's time)
    labels = oracle.oracle_label_anchors(
        model.normalized_anchors.cpu(), [b.cpu() / size for b in boxes], classes, model.num_classes,
        pred_boxes=pred_boxes, pred_logits=logits.detach().cpu(), mutual_guidance=mutual_guidance,
    )
    labels = {k: v.to(device) for k, v in labels.items()}
    cls_labels = labels["cls_labels"]
    one_hot = torch.zeros(*cls_labels.shape, model.num_classes + 1, device=device)  # background: an extra column
    one_hot.scatter_(2, cls_labels.masked_fill(cls_labels < 0, model.num_classes).unsqueeze(-1), 1.0)
    targets = one_hot[..., :-1]
    # the authors' rule: the focal loss runs over positive and negative anchors only (a boolean-mask selection)
    trained = cls_labels != -1
    logits, targets = logits[trained], targets[trained]
    p = logits.sigmoid()
    pt = (1 - p) * targets + p * (1 - targets)
    weight = (0.25 * targets + 0.75 * (1 - targets)) * pt
    focal = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight
    num_pos = max(1, int(((cls_labels >= 0) & (cls_labels < model.num_classes)).sum()))
    loss_cls = focal.sum() / num_pos
    reg_targets, reg_preds = [], []
    for i in range(len(boxes)):
        idx = labels["reg_mask"][i].nonzero().flatten()
        matched = boxes[i][labels["reg_idx"][i, idx]]
        reg_targets.append(model.box2box_transform.get_deltas(model.anchors[idx], matched))
        reg_preds.append(deltas[i, idx])
    reg_preds, reg_targets = torch.cat(reg_preds), torch.cat(reg_targets)
    loss_box = balanced_l1_loss(reg_preds, reg_targets).sum() / max(1, 4 * len(reg_preds))
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


def authors_losses(model, multibox_loss, priors, logits, deltas, batch):
    """The authors' own MultiBoxLoss: targets relative to the image side, labels from 1 (0 is its background)."""
    size = model.input_size
    targets = [
        torch.cat([x["instances"].gt_boxes.tensor / size, (x["instances"].gt_classes + 1).float()[:, None]], 1)
        .cuda()  # main.py's placement: the benchmark's device (set_paper_device)
        for x in batch
    ]
    loss_box, loss_cls = multibox_loss((deltas, logits), priors, targets)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


def ours_in_phases(model, batch):
    """The body of MutualGuideDetector.forward in training, cut where the phases are timed."""
    images = model.preprocess_image(batch).tensor
    gt = batch_ground_truth(batch, model.input_size, model.device)
    logits, deltas = model.predict(images)
    return logits, deltas, gt


class Side:
    """One way of doing the step, with its own copy of the weights and its own optimizer."""

    def __init__(self, name, model, loss_fn=None, precision=None):
        self.name, self.model, self.loss_fn = name, model, loss_fn
        self.sync = synchronizer(model.device)
        self.precision = precision  # a mixed Precision for "ours, mixed"; None: float32
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        self.times, self.losses = [], None

    def step(self, batch):
        self.sync()
        t0 = time.perf_counter()
        if self.loss_fn is None:  # ours, exactly as detectron2's trainer (or MixedPrecisionTrainer) calls the model
            with self.precision.autocast() if self.precision else contextlib.nullcontext():
                losses = self.model(batch)
            self.sync()
            t1 = t2 = time.perf_counter()  # forward and losses are one call
        elif self.loss_fn == "phases":  # ours again, the same calls with timers between them
            logits, deltas, gt = ours_in_phases(self.model, batch)
            self.sync()
            t1 = time.perf_counter()
            losses = self.model.losses(logits, deltas, gt)
            self.sync()
            t2 = time.perf_counter()
        else:
            images = self.model.preprocess_image(batch).tensor
            logits, deltas = self.model.predict(images)
            self.sync()
            t1 = time.perf_counter()
            losses = self.loss_fn(logits, deltas, batch)
            self.sync()
            t2 = time.perf_counter()
        self.optimizer.zero_grad()
        sum(losses.values()).backward()
        self.sync()
        t3 = time.perf_counter()
        self.optimizer.step()
        self.sync()
        t4 = time.perf_counter()
        self.times.append((t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
        self.losses = {k: float(v.detach()) for k, v in losses.items()}

    def best(self):
        return min(self.times[1:])  # the first step warms up


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ShuffleNetV2")
    parser.add_argument("--neck", default="FPN")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side, after one warm-up step "
                        "(the best is kept: on a shared machine, the step least disturbed by other processes)")
    add_paper_repo_argument(parser, required=False, help=PAPER_REPO_HELP + ": also time the authors' own "
                            "MultiBoxLoss")
    parser.add_argument("--baseline", action="store_true", help="also time the IoU baseline")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="MODEL.PRECISION of the 'ours, mixed' side (float32: no such side)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] for every side (default: cuda when there is a GPU)")
    args = parser.parse_args()
    mixed = resolve_precision(args.precision, args.device)
    authors = None
    if args.paper_repo:
        MultiBoxLoss, PriorBox = load_paper_loss(args.paper_repo)
        set_paper_device(args.device)  # their .cuda() calls reach the benchmark's device
        authors = (MultiBoxLoss, PriorBox(24.0, args.size).forward().cuda())
    print(f"{args.backbone}-{args.neck} {args.size}x{args.size}, batch {args.batch}, {args.num_classes} classes, "
          f"{device_description(args.device)}, torch {torch.__version__}; best of {args.repeats} steps per side, "
          f"taken in turn")
    batch = make_batch(args.batch, args.size, args.num_classes)
    for mutual_guidance in (True, False) if args.baseline else (True,):
        cfg = make_cfg(args.backbone, args.neck, args.size, args.num_classes)
        cfg.MODEL.DEVICE = args.device
        cfg.MODEL.MUTUAL_GUIDE.ENABLED = mutual_guidance
        torch.manual_seed(0)
        ours = build_model(cfg).train()
        cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = []  # the paper's layout
        paper = build_model(cfg).train()
        paper.load_state_dict(ours.state_dict())
        sides = [
            Side("ours", ours),
            Side("ours, phased", copy.deepcopy(ours), "phases"),
            *([Side(f"ours, {mixed.name}", copy.deepcopy(ours), precision=mixed)] if mixed.mixed else []),
            Side("paper-style", paper, lambda lo, de, b: paper_style_losses(paper, lo, de, b)),
        ]
        if authors is not None:
            authors_model = copy.deepcopy(paper)
            multibox = authors[0](args.num_classes + 1, mutual_guide=mutual_guidance)
            sides.append(Side("authors'", authors_model,
                              lambda lo, de, b: authors_losses(authors_model, multibox, authors[1], lo, de, b)))
        for _ in range(args.repeats + 1):
            for side in sides:
                side.step(batch)
        name = "mutual guidance" if mutual_guidance else "IoU baseline"
        t_ours = sides[0].best()[0]
        print(f"\n{name}: step time (ms), best of {args.repeats}; forward | assignment + losses | backward | SGD")
        for side in sides:
            total, fwd, loss, bwd, sgd = side.best()
            split = f"{fwd * 1e3:7.0f} | {loss * 1e3:7.0f} | {bwd * 1e3:7.0f} | {sgd * 1e3:4.0f}"
            if side.loss_fn is None:
                split = "(one call)                | " + f"{bwd * 1e3:7.0f} | {sgd * 1e3:4.0f}"
            ratio = "" if side.loss_fn in (None, "phases") else f"   ours is {total / t_ours:4.2f}x faster"
            losses = ", ".join(f"{k} {v:.4f}" for k, v in side.losses.items())
            print(f"  {side.name:16s} {total * 1e3:7.0f}   {split}{ratio}   (last step: {losses})")
        if mixed.mixed:
            t_mixed = sides[2].best()[0]
            others = [s for s in sides if s.loss_fn not in (None, "phases")]
            print(f"  ours in {mixed.name} is " + ", ".join(
                [f"{t_ours / t_mixed:4.2f}x faster than ours in float32"]
                + [f"{s.best()[0] / t_mixed:4.2f}x faster than {s.name}" for s in others]))


if __name__ == "__main__":
    main()
