#!/usr/bin/env python
"""
Our 2023 network (MODEL.MUTUAL_GUIDE.NETWORK "mg2023", configs/mg23_*_pafpn_coco.yaml) against the authors' code at
108b4a8, row by row of their README table: parameters and FLOPs of both, their `Detector` state dict loaded into
ours through our checkpointer, raw loc / conf outputs on one input, anchors and box decoding. Exits 1 on any
mismatch. The FPN2023 and SSD2023 necks are checked the same way (outputs only) on the rows of --other-necks.

    git clone https://github.com/zhanghengdev/MutualGuide <clone> && git -C <clone> checkout 108b4a8
    python parity/check_authors_2023_model.py --authors-repo <clone> [--rows resnet18,shufflenet10]

Their code is copied to a temporary folder and imported from there on the CPU (`.cuda()` made a no-op). In the
copy one line changes, so that RepVGG-A0 builds: models/detector.py tests `"vgg" in backbone` before
`"repvgg" in backbone`, so "repvgg-A0" reaches VGGBackbone, which raises ValueError; the copy tests
`backbone.startswith("vgg")` instead. Their backbones are built without ImageNet weights (none here): CSPDarknet,
ResNet and ShuffleNet with pretrained=False, RepVGG with pretrained=True and the file loading skipped, so that
stage0 / stage1 take the deploy form their training has.

FLOPs: their utils/flops_counter.py (multiply-adds + biases, BatchNorms, ReLUs, poolings, nn.Upsample; no SiLU, no
F.interpolate) on both models, as built (must be equal) and in deploy form as their test.py measures (theirs
`deploy()`, which folds only the BatchNorms of their conv units; ours `fuse_for_inference()`, which folds every
BatchNorm, ShuffleNet's included). "table method": their test.py's parameter count, i.e. the counter's (parameters with
requires_grad) after deploy, on the model as built with ImageNet weights (stem stages frozen), without the
distillation branch.
"""
import argparse
import atexit
import os
import shutil
import sys
import tempfile

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects", "MutualGuide"))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from mutual_guide.checkpoint import MutualGuideCheckpointer, convert_paper_state_dict  # noqa: E402
from mutual_guide.config import add_mutual_guide_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# row -> (their --backbone, our config, README table: AP, params (M), FLOPs (G))
ROWS = {
    "cspdarknet075": ("cspdarknet-0.75", "mg23_cspdarknet075_pafpn_coco.yaml", 43.0, 24.32, 24.02),
    "cspdarknet05": ("cspdarknet-0.5", "mg23_cspdarknet05_pafpn_coco.yaml", 40.4, 17.40, 12.67),
    "resnet18": ("resnet18", "mg23_resnet18_pafpn_coco.yaml", 40.4, 22.09, 22.95),
    "repvggA0": ("repvgg-A0", "mg23_repvggA0_pafpn_coco.yaml", 39.9, 12.30, 18.40),
    "shufflenet15": ("shufflenet-1.5", "mg23_shufflenet15_pafpn_coco.yaml", 35.7, 2.55, 2.65),
    "shufflenet10": ("shufflenet-1.0", "mg23_shufflenet10_pafpn_coco.yaml", 31.8, 1.50, 1.47),
}
# modules their backbones freeze when they load ImageNet weights
FROZEN = {"CSPDarkNetBackbone": ("stem", "dark2"), "ResNetBackbone": ("conv1", "bn1", "layer1"),
          "ShuffleNetBackbone": ("conv1",)}
TOLERANCE = 1e-4  # largest |difference| / largest |value| of the raw outputs


def copy_authors_code(repo):
    for path in ("models/detector.py", "utils/flops_counter.py", "utils/box/prior_box.py"):
        if not os.path.isfile(os.path.join(repo, path)):
            raise FileNotFoundError(f"--authors-repo {repo!r} is not a checkout of the authors' code at 108b4a8 "
                                    f"(no {path})")
    tmp = tempfile.mkdtemp(prefix="mg2023-authors-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    dest = os.path.join(tmp, "code")
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(".git", "weights"))
    detector = os.path.join(dest, "models", "detector.py")
    text = open(detector).read()
    if 'if "vgg" in backbone:' not in text:
        raise RuntimeError(f"{detector}: the line the RepVGG fix replaces is not there; is this 108b4a8?")
    with open(detector, "w") as f:
        f.write(text.replace('if "vgg" in backbone:', 'if backbone.startswith("vgg"):'))
    return dest


def import_authors(code):
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    sys.path.insert(0, code)
    import models.backbone as backbones
    import models.detector as detector
    from utils.box.box_utils import decode, point_form
    from utils.box.prior_box import get_prior_box
    from utils.flops_counter import get_model_complexity_info

    backbones.REPVGGBackbone.load_pre_trained_weights = lambda self: None
    for name in FROZEN:
        cls = getattr(backbones, name)

        def init(self, *args, _init=cls.__init__, _name=name, **kwargs):
            kwargs["pretrained"] = False
            _init(self, *args, **kwargs)
            self._frozen_if_pretrained = FROZEN[_name]

        setattr(detector, name, type(name, (cls,), {"__init__": init}))
    return detector, get_model_complexity_info, get_prior_box, point_form, decode


def randomize(model, seed):
    """Every parameter and BatchNorm statistic random, so that no layer is near an identity or a zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.4 - 0.2)
            elif t.dim() == 1:  # BatchNorm weights
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:  # conv weights: variance-preserving
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / fan_in) ** 0.5)
    return model


class Predict(nn.Module):
    """Our detector's network alone, for the counter (which calls the module on a tensor)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.predict(x)


def count(model):
    return sum(p.numel() for p in model.parameters())


def table_method_params(their_model, counter):
    """Their test.py's figure: counter parameters (requires_grad) after deploy, stems frozen, no `dist`."""
    frozen = getattr(their_model.backbone, "_frozen_if_pretrained", ())
    for name in frozen:
        for p in getattr(their_model.backbone, name).parameters():
            p.requires_grad_(False)
    del their_model.dist
    their_model.deploy()
    with torch.no_grad():
        flops, params = counter(their_model, (3, 640, 640), print_per_layer_stat=False, as_strings=False)
    return params, flops


def our_cfg(config):
    cfg = add_mutual_guide_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = []
    return cfg


def check_row(row, authors, args):
    detector, counter, get_prior_box, point_form, decode = authors
    backbone, config, table_ap, table_params, table_flops = ROWS[row]
    theirs = randomize(detector.Detector(640, 80, backbone, "pafpn", "normal"), seed=1).eval()
    their_all, their_dist = count(theirs), sum(p.numel() for n, p in theirs.named_parameters() if n.startswith("dist"))
    # what their network computes with: no `dist`, no RepVGG branches left beside a deploy-form conv
    kept = convert_paper_state_dict(dict(theirs.named_parameters()))
    their_used = sum(p.numel() for p in kept.values())
    ours = build_model(our_cfg(config)).eval()
    with torch.no_grad():
        our_flops_built, _ = counter(Predict(ours), (3, 640, 640), print_per_layer_stat=False, as_strings=False)
        their_flops_built, _ = counter(theirs, (3, 640, 640), print_per_layer_stat=False, as_strings=False)
    ok = our_flops_built == their_flops_built
    # their state dict, as train.py saves it, through our checkpointer (the paper_keys conversion)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "authors.pth")
        torch.save({"model": theirs.state_dict(), "optimizer": {}, "iteration": 0}, path)
        MutualGuideCheckpointer(ours).load(path)
    x = torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(2)) * 50
    with torch.no_grad():
        out = theirs(x)
        logits, deltas = ours.predict(x)
    diffs = {}
    for name, a, b in (("loc", out["loc"], deltas), ("conf", out["conf"], logits)):
        diffs[name] = float((a - b).abs().max() / a.abs().max()) if a.shape == b.shape else float("inf")
        ok &= diffs[name] <= TOLERANCE
    # deploy forms: theirs `deploy()`, ours `fuse_for_inference()`; FLOPs counted on both with their counter
    ours.fuse_for_inference()
    with torch.no_grad():
        fused_logits, fused_deltas = ours.predict(x)
    diffs["fused conf"] = float((out["conf"] - fused_logits).abs().max() / out["conf"].abs().max())
    diffs["fused loc"] = float((out["loc"] - fused_deltas).abs().max() / out["loc"].abs().max())
    ok &= diffs["fused conf"] <= TOLERANCE and diffs["fused loc"] <= TOLERANCE
    with torch.no_grad():
        our_flops, our_fused_params = counter(Predict(ours), (3, 640, 640), print_per_layer_stat=False,
                                              as_strings=False)
    their_table_params, their_flops = table_method_params(theirs, counter)
    our_params = count(build_model(our_cfg(config)))
    ok &= our_params == their_used
    # anchors (bit for bit) and decoding
    priors = get_prior_box(48.0, 640)
    anchors_equal = torch.equal(ours.normalized_anchors, point_form(priors))
    ok &= anchors_equal
    loc = torch.randn(len(priors), 4, generator=torch.Generator().manual_seed(3))
    decoded = ours.box2box_transform.apply_deltas(loc, ours.anchors) / 640
    decode_diff = float((decoded - decode(loc, priors)).abs().max())
    ok &= decode_diff <= 1e-5
    print(f"{row} ({backbone}, {config})")
    print(f"  params   ours {our_params / 1e6:8.4f} M   theirs {their_used / 1e6:8.4f} M used "
          f"({their_all / 1e6:.4f} M built: dist {their_dist / 1e6:.4f} M, unused RepVGG branches "
          f"{(their_all - their_dist - their_used) / 1e6:.4f} M)   equal: {our_params == their_used}")
    print(f"  deployed ours {our_fused_params / 1e6:8.4f} M   theirs by their test.py {their_table_params / 1e6:8.4f} M"
          f"   table {table_params:.2f} M")
    print(f"  FLOPs    as built: ours {our_flops_built / 1e9:.4f} G theirs {their_flops_built / 1e9:.4f} G "
          f"equal: {our_flops_built == their_flops_built}   deployed: ours {our_flops / 1e9:.4f} G theirs "
          f"{their_flops / 1e9:.4f} G   table {table_flops:.2f} G")
    print("  outputs  " + "   ".join(f"{k} {v:.1e}" for k, v in diffs.items())
          + f"   anchors bit-equal {anchors_equal}   decode |diff| {decode_diff:.1e}   -> {'OK' if ok else 'MISMATCH'}")
    return ok


def check_other_neck(row, neck, authors):
    """Raw outputs of their Detector with `neck` ("fpn", "ssd") against ours with the matching *2023 neck."""
    detector = authors[0]
    backbone, config = ROWS[row][:2]
    theirs = randomize(detector.Detector(640, 80, backbone, neck, "normal"), seed=1).eval()
    cfg = our_cfg(config)
    cfg.MODEL.NECK.NAME = {"fpn": "FPN2023", "ssd": "SSD2023"}[neck]
    ours = build_model(cfg).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(2)) * 50
    with torch.no_grad():
        out = theirs(x)
        logits, deltas = ours.predict(x)
    diffs = [float((a - b).abs().max() / a.abs().max()) for a, b in ((out["loc"], deltas), (out["conf"], logits))]
    ok = max(diffs) <= TOLERANCE
    print(f"{row} with {cfg.MODEL.NECK.NAME} (their --neck {neck}): loc {diffs[0]:.1e}   conf {diffs[1]:.1e}"
          f"   -> {'OK' if ok else 'MISMATCH'}")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-repo", required=True, metavar="DIR",
                        help="a checkout of zhanghengdev/MutualGuide at 108b4a8 (the authors' code)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows among {', '.join(ROWS)}")
    parser.add_argument("--other-necks", default="resnet18,shufflenet10",
                        help="rows on which FPN2023 and SSD2023 are compared too (\"\": none)")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    neck_rows = [r for r in args.other_necks.split(",") if r]
    unknown = sorted(set(rows + neck_rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows / --other-necks: unknown {unknown}; known: {list(ROWS)}")
    torch.manual_seed(0)
    authors = import_authors(copy_authors_code(args.authors_repo))
    results = [check_row(row, authors, args) for row in rows]
    results += [check_other_neck(row, neck, authors) for row in neck_rows for neck in ("fpn", "ssd")]
    print(f"{sum(results)} of {len(results)} checks match the authors' code at 108b4a8"
          + ("" if all(results) else " -> MISMATCH"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
