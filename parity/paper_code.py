"""
The authors' modules (zhanghengdev/MutualGuide at fd2c4cc), imported from a checkout given on the command line,
on the CPU. Nothing of the authors' code is in this repository; get it with

    git clone https://github.com/zhanghengdev/MutualGuide <clone> && git -C <clone> checkout fd2c4cc

The authors' code calls .cuda() everywhere; `import_paper` makes it a no-op for this process.
"""
import importlib
import os
import sys

import torch

PAPER_REPO_HELP = "a checkout of zhanghengdev/MutualGuide at fd2c4cc (the authors' code)"


def add_paper_repo_argument(parser, required=True, help=PAPER_REPO_HELP):
    """--paper-repo DIR; --seed-repo is its old name, still accepted (the help names only the new one)."""
    action = parser.add_argument("--paper-repo", "--seed-repo", dest="paper_repo", required=required, metavar="DIR",
                                 help=help)
    # argparse parses by its own table of option strings, filled above; the help and the usage line print
    # `option_strings`: without the old name there, it still parses but is no longer advertised
    action.option_strings = ["--paper-repo"]
    return action


def import_paper(paper_repo, *modules):
    """The authors' modules by dotted name (e.g. "data.data_augment", "models.detector"), importable on the CPU."""
    if not os.path.isfile(os.path.join(paper_repo, "main.py")):
        raise FileNotFoundError(
            f"--paper-repo {paper_repo!r} is not a checkout of the authors' code (no main.py in it)"
        )
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    if paper_repo not in sys.path:
        sys.path.insert(0, paper_repo)
    loaded = [importlib.import_module(name) for name in modules]
    return loaded[0] if len(loaded) == 1 else loaded


def paper_networks(name):
    """Our MODEL.BACKBONE.NAME / MODEL.NECK.NAME -> the authors' `--backbone` / `--neck` value."""
    return {
        "VGG16": "vgg16", "ResNet18": "resnet18", "RepVGG": "repvgg", "ShuffleNetV2": "shufflenet",
        "SSD": "ssd", "FPN": "fpn", "PAFPN": "pafpn",
    }[name]
