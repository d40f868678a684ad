"""
The authors' modules (zhanghengdev/MutualGuide at fd2c4cc), imported from a checkout given on the command line.
Nothing of the authors' code is in this repository; get it with

    git clone https://github.com/zhanghengdev/MutualGuide <clone> && git -C <clone> checkout fd2c4cc

The authors' code calls .cuda() everywhere; once `import_paper` has run, that call moves to the device
`set_paper_device` names for this process: the CPU by default (a no-op there), a GPU where a benchmark runs on one.
"""
import importlib
import os
import sys

import torch

_paper_device = torch.device("cpu")  # where the authors' .cuda() calls move tensors and modules

PAPER_REPO_HELP = "a checkout of zhanghengdev/MutualGuide at fd2c4cc (the authors' code)"


def add_paper_repo_argument(parser, required=True, help=PAPER_REPO_HELP):
    """--paper-repo DIR; --seed-repo is its old name, still accepted (the help names only the new one)."""
    action = parser.add_argument("--paper-repo", "--seed-repo", dest="paper_repo", required=required, metavar="DIR",
                                 help=help)
    # argparse parses by its own table of option strings, filled above; the help and the usage line print
    # `option_strings`: without the old name there, it still parses but is no longer advertised
    action.option_strings = ["--paper-repo"]
    return action


def set_paper_device(device):
    """The device the authors' `.cuda()` calls move to from now on, in this process ("cpu" until then)."""
    global _paper_device
    _paper_device = torch.device(device)
    return _paper_device


def import_paper(paper_repo, *modules):
    """
    The authors' modules by dotted name (e.g. "data.data_augment", "models.detector"); from then on `.cuda()`
    moves to the device of `set_paper_device`.
    """
    if not os.path.isfile(os.path.join(paper_repo, "main.py")):
        raise FileNotFoundError(
            f"--paper-repo {paper_repo!r} is not a checkout of the authors' code (no main.py in it)"
        )
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to(_paper_device)
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self.to(_paper_device)
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
