"""
MODEL.MUTUAL_GUIDE.RECIPE "authors_2023" against the authors' code at 108b4a8 (zhanghengdev/MutualGuide): the
soft labels and weights of both assignments (their `mutual_match` and `match`) and each loss term of their
`MultiBoxLoss`, on the same predictions, boxes and anchors, on the CPU in float32. Nothing of the authors' code
is in this repository: give a checkout of that commit (see parity/README.md), e.g.

    .venv/bin/python parity/check_authors_2023_loss.py --authors-repo <checkout>

Their utils/box and utils/loss are copied to a temporary folder and imported from there, with `.cuda()` made a
no-op for this process. Anchors: their `get_prior_box(48, 640)` (3 levels, strides 16 to 64) on their side; on
ours the detector's anchor code with the same geometry (`generate_anchors(320, 24, 3)`: the same 40/20/10 maps
and sides relative to the image, doubled to 640 px), compared with theirs first. Predictions of the detector's
shapes: "random" (scores near the 0.01 prior, small deltas, as an initialised head) and "spread" (wide logits
and deltas, which make many objects compete). Both assignments, the authors' bugs followed (the defaults). Exit
status 1 on any mismatch.
"""
import argparse
import importlib
import os
import shutil
import sys
import tempfile

import torch

from mutual_guide.modeling.anchors import generate_anchors, generate_normalized_anchors
from mutual_guide.modeling.recipe_2023 import shift_labels_as_authors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_paper_loss import random_ground_truth  # noqa: E402

SIZE, ANCHOR_SIZE = 640, 48.0
TARGET_TOL = 1e-5  # absolute, on weights in [0, 1], normalised boxes and SSD deltas
LOSS_TOL = 1e-5  # relative


def import_authors_2023(repo):
    """Their utils.box and utils.loss, copied into a temporary package, importable on the CPU."""
    for path in ("utils/box/box_utils.py", "utils/loss/multibox_loss.py", "utils/loss/siou_loss.py"):
        if not os.path.isfile(os.path.join(repo, path)):
            raise FileNotFoundError(f"--authors-repo {repo!r} is not a checkout of the authors' code at 108b4a8 "
                                    f"(no {path})")
    root = tempfile.mkdtemp(prefix="mg2023-authors-")
    package = os.path.join(root, "authors2023_utils")
    for sub in ("box", "loss"):
        shutil.copytree(os.path.join(repo, "utils", sub), os.path.join(package, sub))
    open(os.path.join(package, "__init__.py"), "w").close()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    sys.path.insert(0, root)
    box = importlib.import_module("authors2023_utils.box")
    loss = importlib.import_module("authors2023_utils.loss.multibox_loss")
    return box, loss, root


class Recorder(torch.nn.Module):
    """Wraps one of their loss modules: keeps its inputs and output of the last call."""

    def __init__(self, module):
        super().__init__()
        self.module, self.inputs, self.output = module, None, None

    def forward(self, *args, **kwargs):
        self.inputs, self.output = (args, kwargs), self.module(*args, **kwargs)
        return self.output


def run_authors(loss_module, mutual, logits, deltas, priors, targets):
    """Their MultiBoxLoss on our predictions; returns what their matcher filled and each loss module's record."""
    criterion = loss_module.MultiBoxLoss(mutual_guide=mutual)
    for name in ("focal_loss", "gfocal_loss", "l1_loss", "iou_loss"):
        setattr(criterion, name, Recorder(getattr(criterion, name)))
    filled = {}
    matcher_name = "mutual_match" if mutual else "match"
    original = getattr(loss_module, matcher_name)

    def recording(*args, **kwargs):
        original(*args, **kwargs)
        # the tensors they fill: mutual_match(truths, labels, regress, classif, priors, loc_t, cls_t, cls_w, loc_w,
        # idx), match(truths, labels, priors, loc_t, cls_t, cls_w, idx)
        filled["tensors"] = args[5:9] if mutual else args[3:6]

    setattr(loss_module, matcher_name, recording)
    try:
        total = criterion({"loc": deltas, "conf": logits}, priors, targets)
    finally:
        setattr(loss_module, matcher_name, original)
    return filled["tensors"], criterion, total


def build_ours(mutual, num_classes):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import mutual_guide

    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                     "Base-MutualGuide.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.NECK.NAME = "ShuffleNetV2", "FPN"
    cfg.INPUT.SIZE, cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = SIZE, num_classes
    cfg.MODEL.MUTUAL_GUIDE.RECIPE, cfg.MODEL.MUTUAL_GUIDE.ENABLED = "authors_2023", mutual
    model = build_model(cfg).train()
    # the 2023 anchors in the detector's frames (see the module docstring)
    model.anchors = generate_anchors(320, 24.0, 3) * 2
    model.normalized_anchors = generate_normalized_anchors(320, 24.0, 3)
    return model


def compare(report, name, ours, theirs, tol):
    diff = float((ours.double() - theirs.double()).abs().max()) if ours.numel() else 0.0
    report.append((name, diff, diff <= tol))


def check_mutual_guidance(model, filled, criterion, labels, losses, num_classes):
    loc_t, cls_t, cls_w, loc_w = filled  # their tensors, in their call order
    report = []
    their_reg_pos, their_cls_pos = loc_w >= 3.0, cls_w >= 3.0
    objects = int((model.last_gt_boxes[..., 2] > 0).sum())
    print(f"  ({objects} objects; theirs: {int(their_cls_pos.sum())} classification, {int(their_reg_pos.sum())} "
          f"regression positives)")
    report.append(("regression positives differing", int((labels.reg_mask != their_reg_pos).sum()), None))
    report.append(("classification positives differing", int(((labels.cls_labels < num_classes) != their_cls_pos)
                                                               .sum()), None))
    compare(report, "regression weights", labels.reg_weight, (loc_w - 3.0).relu(), TARGET_TOL)
    (pred, soft_target), _ = criterion.gfocal_loss.inputs
    ours_target = torch.zeros_like(soft_target)
    ours_target.scatter_(-1, labels.cls_labels.clamp(max=num_classes - 1).unsqueeze(-1),
                         labels.cls_weight.unsqueeze(-1))
    compare(report, "classification soft targets", ours_target, soft_target, TARGET_TOL)
    same = labels.reg_mask == their_reg_pos
    gt = model.last_gt_boxes.gather(1, labels.reg_idx.unsqueeze(-1).expand(-1, -1, 4)) / SIZE
    compare(report, "regression target boxes", gt[same & labels.reg_mask], loc_t[same & their_reg_pos], TARGET_TOL)
    (_, encoded), kw = criterion.l1_loss.inputs
    ours_deltas = model.box2box_transform.get_deltas(
        model.anchors.repeat(len(gt), 1), (gt * SIZE).view(-1, 4)).view(gt.shape)[labels.reg_mask]
    if bool(same.all()):
        compare(report, "regression target deltas", ours_deltas, encoded, TARGET_TOL * 10)
    for key, module in (("loss_cls", criterion.gfocal_loss), ("loss_box_reg", criterion.l1_loss),
                        ("loss_box_iou", criterion.iou_loss)):
        report.append((key, float(losses[key]), float(module.output)))
    return report


def check_baseline(model, filled, criterion, labels, losses, num_classes):
    loc_t, cls_t, cls_w = filled
    report = []
    their_pos = cls_w >= 0.5
    report.append(("positives differing", int((labels.reg_mask != their_pos).sum()), None))
    their_ign = (cls_w < 0.5) & (cls_w >= 0.4)
    report.append(("ignored differing", int(((labels.cls_labels == -1) != their_ign).sum()), None))
    (pred, batch_label, mask), _ = criterion.focal_loss.inputs
    shifted = shift_labels_as_authors(labels, num_classes)
    ours = torch.zeros(*labels.cls_labels.shape, num_classes + 1)
    column = torch.where(shifted.cls_labels >= 0, shifted.cls_labels, shifted.ignored_class)
    value = torch.where(shifted.cls_labels >= 0, 1.0, -1.0)
    ours.scatter_(-1, column.unsqueeze(-1), value.unsqueeze(-1))
    ours = ours[..., :num_classes]
    compare(report, "classification targets (-1 ignored)", ours, batch_label, 0.0)
    same = labels.reg_mask == their_pos
    gt = model.last_gt_boxes.gather(1, labels.reg_idx.unsqueeze(-1).expand(-1, -1, 4)) / SIZE
    compare(report, "regression target boxes", gt[same & labels.reg_mask], loc_t[same & their_pos], TARGET_TOL)
    for key, module in (("loss_cls", criterion.focal_loss), ("loss_box_reg", criterion.l1_loss)):
        report.append((key, float(losses[key]), float(module.output)))
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-repo", required=True, metavar="DIR",
                        help="a checkout of zhanghengdev/MutualGuide at 108b4a8 (the authors' current code)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--trials", type=int, default=3, help="seeds")
    args = parser.parse_args()
    torch.manual_seed(0)
    box_module, loss_module, temp = import_authors_2023(args.authors_repo)
    ok = True
    try:
        priors = box_module.get_prior_box(ANCHOR_SIZE, SIZE)
        theirs_xyxy = box_module.point_form(priors)
        ours_xyxy = generate_normalized_anchors(320, 24.0, 3)
        anchor_diff = float((ours_xyxy - theirs_xyxy).abs().max())
        print(f"anchors: ours {tuple(ours_xyxy.shape)} theirs {tuple(theirs_xyxy.shape)}, "
              f"max |difference| of the normalised XYXY {anchor_diff:.1e}"
              f"{' (bit-identical)' if torch.equal(ours_xyxy, theirs_xyxy) else ''}")
        ok &= anchor_diff <= 1e-7
        worst = {}
        for mutual in (True, False):
            model = build_ours(mutual, args.num_classes)
            original_label_anchors = model.label_anchors

            def label_anchors(logits, deltas, gt, _model=model, _original=original_label_anchors):
                gt_boxes, labels = _original(logits, deltas, gt)
                _model.last_gt_boxes, _model.last_labels = gt_boxes, labels
                return gt_boxes, labels

            model.label_anchors = label_anchors
            for trial in range(args.trials):
                g = torch.Generator().manual_seed(trial)
                gt, targets = random_ground_truth(args.batch, SIZE, args.num_classes, g, first_label=0)
                a = len(priors)
                shape_l, shape_d = (args.batch, a, args.num_classes), (args.batch, a, 4)
                inputs = {
                    "random": (torch.randn(shape_l, generator=g) * 0.5 - 4.6, torch.randn(shape_d, generator=g) * 0.1),
                    "spread": (torch.randn(shape_l, generator=g) * 2 - 3, torch.randn(shape_d, generator=g) * 0.5),
                }
                for source, (logits, deltas) in inputs.items():
                    filled, criterion, total = run_authors(loss_module, mutual, logits, deltas, priors, targets)
                    losses = model.losses(logits, deltas, gt)
                    name = "mutual guidance" if mutual else "IoU baseline"
                    print(f"\n{name}, seed {trial}, {source}:")
                    check = check_mutual_guidance if mutual else check_baseline
                    report = check(model, filled, criterion, model.last_labels, losses, args.num_classes)
                    report.append(("total (their scalar)", float(sum(losses.values())), float(total)))
                    for item, value, expected in report:
                        key = (name, item)
                        if expected is None:  # a count of differing anchors
                            good = value == 0
                            print(f"  {item:40s} {value}")
                            worst[key] = max(worst.get(key, 0), value)
                        elif isinstance(expected, bool):  # a max abs difference with its verdict
                            good = expected
                            print(f"  {item:40s} max |diff| {value:.1e}")
                            worst[key] = max(worst.get(key, 0.0), value)
                        else:  # a loss value
                            rel = abs(value / expected - 1) if expected else abs(value)
                            good = rel <= LOSS_TOL
                            print(f"  {item:40s} ours {value:.6f} theirs {expected:.6f} (rel {rel:.1e})")
                            worst[key] = max(worst.get(key, 0.0), rel)
                        if not good:
                            print("    ^ MISMATCH")
                        ok &= good
        print("\nlargest over seeds and inputs (counts: differing anchors; targets: max |diff|; losses: relative):")
        for (name, item), value in worst.items():
            print(f"  {name:16s} {item:40s} {value:.1e}" if isinstance(value, float) else
                  f"  {name:16s} {item:40s} {value}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
