"""
Our losses against the authors' own `MultiBoxLoss` (zhanghengdev/MutualGuide at commit fd2c4cc), on the same
predictions, boxes and anchors, for both assignments and both ignore rules. Nothing of the authors' code is in
this repository: give the path of a checkout of that commit (see parity/README.md), e.g.

    .venv/bin/python parity/check_paper_loss.py --paper-repo <checkout>

Predictions are those of a randomly initialised ShuffleNetV2-FPN-320 on random images ("network", scores near the
0.01 prior) and random logits/deltas of a wider spread ("spread", which makes the assignments disagree more).
The rule of the authors' code at fd2c4cc is IGNORE "anchor": both losses must agree within 1e-4 relative; "class"
is the authors' later rule and is printed to show the difference.
"""
import argparse
import os
import sys

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import mutual_guide
from mutual_guide.modeling.assignment import build_anchor_matcher

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_code import add_paper_repo_argument, import_paper  # noqa: E402


def load_paper_loss(paper_repo):
    """The authors' MultiBoxLoss and PriorBox; their hard-coded .cuda() calls go to set_paper_device's device."""
    loss_module, prior_module = import_paper(paper_repo, "utils.loss.multibox_loss", "utils.box.prior_box")
    return loss_module.MultiBoxLoss, prior_module.PriorBox


def random_ground_truth(batch, size, num_classes, generator, first_label=1):
    """
    5-10 boxes per image of `size` px, sides 10 to 10 + 0.35 `size`, clipped to the image: (our Instances, the
    authors' [G, 5] targets: boxes relative to the image, the class numbered from `first_label`: 1 in the paper's
    code, whose 0 is the background; 0 in their code at 108b4a8).
    """
    instances, targets = [], []
    for _ in range(batch):
        k = int(torch.randint(5, 11, (1,), generator=generator))
        xy = torch.rand(k, 2, generator=generator) * size * 0.75
        wh = torch.rand(k, 2, generator=generator) * size * 0.35 + 10
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        classes = torch.randint(0, num_classes, (k,), generator=generator)
        instances.append(Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=classes))
        targets.append(torch.cat([boxes / size, (classes + first_label).float().unsqueeze(1)], 1))
    return instances, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_paper_repo_argument(parser)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    MultiBoxLoss, PriorBox = load_paper_loss(args.paper_repo)
    priors = PriorBox(24.0, args.size).forward()

    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    # the detectron2 keys of the paper's detector (meta-architecture, pixel mean...) are in the base config
    cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                     "Base-MutualGuide.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.NECK.NAME = "ShuffleNetV2", "FPN"
    cfg.INPUT.SIZE, cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = args.size, args.num_classes
    torch.manual_seed(0)
    model = build_model(cfg).train()

    worst = 0.0
    for trial in range(args.trials):
        g = torch.Generator().manual_seed(trial)
        gt, targets = random_ground_truth(args.batch, args.size, args.num_classes, g)
        images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), generator=g).float()
        with torch.no_grad():
            net_logits, net_deltas = model.predict(images - model.pixel_mean)
        spread = (torch.randn(net_logits.shape, generator=g) * 2 - 3, torch.randn(net_deltas.shape, generator=g) * 0.5)
        for source, (logits, deltas) in (("network", (net_logits, net_deltas)), ("spread", spread)):
            for mutual in (True, False):
                paper_loss_box, paper_loss_cls = MultiBoxLoss(args.num_classes + 1, mutual_guide=mutual)(
                    (deltas, logits), priors, targets
                )
                thresholds = cfg.MODEL.MUTUAL_GUIDE.IOU_THRESHOLDS
                model.anchor_matcher = build_anchor_matcher(mutual, thresholds, args.num_classes)
                for ignore in ("anchor", "class"):
                    model.ignore = ignore
                    ours = model.losses(logits, deltas, gt)
                    rel_cls = abs(float(ours["loss_cls"]) / float(paper_loss_cls) - 1)
                    rel_box = abs(float(ours["loss_box_reg"]) / float(paper_loss_box) - 1)
                    if ignore == "anchor":
                        worst = max(worst, rel_cls, rel_box)
                    print(
                        f"trial {trial} {source:7s} {'mutual guidance' if mutual else 'IoU baseline':15s} "
                        f"IGNORE {ignore!r:8s} loss_cls ours {float(ours['loss_cls']):10.4f} "
                        f"paper {float(paper_loss_cls):10.4f} (rel {rel_cls:.1e})   loss_box_reg ours "
                        f"{float(ours['loss_box_reg']):.5f} paper {float(paper_loss_box):.5f} (rel {rel_box:.1e})"
                    )
    verdict = "OK" if worst <= 1e-4 else "MISMATCH"
    print(f"largest relative difference with the authors' rule (IGNORE 'anchor'): {worst:.1e} -> {verdict}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
