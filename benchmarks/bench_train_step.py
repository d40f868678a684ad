"""
A whole training step (forward, assignment, losses, backward, SGD update) of the same network on the same batch:
this project's vectorised assignment and losses against the paper's style of computing them (a Python loop per
image and per object for the assignment, a dense one-hot target over every anchor and class, the loss built from
it), in one run. Prints both times and the ratio; the bar is 1.3x.

The paper-style side reuses tests/oracle.py (the per-object assignment the tests trust) for the labels and
computes the losses the way the authors' multibox loss does, with autograd, so both sides do the same backward.

    .venv/bin/python benchmarks/bench_train_step.py [--backbone ShuffleNetV2] [--neck FPN] [--batch 8]
"""
import argparse
import copy
import time

import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import mutual_guide
from mutual_guide.losses import balanced_l1_loss

from bench_assignment import load_oracle  # the same per-object oracle, loaded from tests/oracle.py


def make_batch(batch, size, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        k = int(torch.randint(5, 11, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * size * 0.75
        wh = torch.rand(k, 2, generator=g) * size * 0.35 + 10
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size)], 1))
        instances.gt_classes = torch.randint(0, num_classes, (k,), generator=g)
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "instances": instances})
    return inputs


def paper_style_losses(model, oracle, logits, deltas, gt_instances):
    """Per-object labels, then a one-hot target over all anchors and classes, as in the authors' code."""
    boxes = [x.gt_boxes.tensor for x in gt_instances]
    classes = [x.gt_classes for x in gt_instances]
    pred_boxes = None
    if model.mutual_guidance:
        pred_boxes = model.decode_boxes(deltas.detach())
    labels = oracle.oracle_label_anchors(
        model.anchors, boxes, classes, model.num_classes, pred_boxes=pred_boxes,
        pred_logits=logits.detach(), mutual_guidance=model.mutual_guidance,
    )
    cls_labels = labels["cls_labels"]
    one_hot = torch.zeros(*cls_labels.shape, model.num_classes + 1)  # background as an extra column
    one_hot.scatter_(2, cls_labels.masked_fill(cls_labels < 0, model.num_classes).unsqueeze(-1), 1.0)
    targets = one_hot[..., :-1]
    # the seed's rule (IGNORE "anchor"): an ignored anchor has no classification term at all
    weight = (cls_labels != -1).unsqueeze(-1).float()
    p = logits.sigmoid()
    focal = targets * 0.25 * (1 - p) * -F.logsigmoid(logits) + (1 - targets) * 0.75 * p * -F.logsigmoid(-logits)
    num_pos = max(1, int(((cls_labels >= 0) & (cls_labels < model.num_classes)).sum()))
    loss_cls = (focal * weight).sum() / num_pos
    reg_targets, reg_preds = [], []
    for i in range(len(boxes)):
        idx = labels["reg_mask"][i].nonzero().flatten()
        matched = boxes[i][labels["reg_idx"][i, idx]]
        reg_targets.append(model.box2box_transform.get_deltas(model.anchors[idx], matched))
        reg_preds.append(deltas[i, idx])
    reg_preds, reg_targets = torch.cat(reg_preds), torch.cat(reg_targets)
    loss_box = balanced_l1_loss(reg_preds, reg_targets).sum() / max(1, 4 * len(reg_preds))
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


def time_steps(model, batch, loss_fn, repeats):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    times = []
    for _ in range(repeats + 1):  # the first step warms up
        start = time.perf_counter()
        images = model.preprocess_image(batch)
        logits, deltas = model.predict(images.tensor)
        gt = [model._scaled_instances(x) for x in batch]
        losses = loss_fn(logits, deltas, gt)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:]), {k: round(float(v.detach()), 5) for k, v in losses.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ShuffleNetV2")
    parser.add_argument("--neck", default="FPN")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    oracle = load_oracle()
    print(f"{args.backbone}-{args.neck} {args.size}x{args.size}, batch {args.batch}, {args.num_classes} classes, "
          f"{torch.get_num_threads()} threads")
    for mutual_guidance in (True, False):
        cfg = get_cfg()
        mutual_guide.add_mutual_guide_config(cfg)
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.NECK.NAME = args.backbone, args.neck
        cfg.INPUT.SIZE, cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = args.size, args.num_classes
        cfg.MODEL.MUTUAL_GUIDE.ENABLED = mutual_guidance
        torch.manual_seed(0)
        ours = build_model(cfg).train()
        paper = copy.deepcopy(ours)
        batch = make_batch(args.batch, args.size, args.num_classes)
        t_ours, l_ours = time_steps(ours, batch, ours.losses, args.repeats)
        t_paper, l_paper = time_steps(
            paper, batch, lambda lo, de, gt: paper_style_losses(paper, oracle, lo, de, gt), args.repeats
        )
        name = "mutual guidance" if mutual_guidance else "IoU baseline"
        print(f"{name:16s} step: ours {t_ours * 1000:8.1f} ms   paper-style {t_paper * 1000:8.1f} ms   "
              f"{t_paper / t_ours:5.2f}x faster   (last losses ours {l_ours}, paper-style {l_paper})")


if __name__ == "__main__":
    main()
