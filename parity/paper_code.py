"""
The seed's modules (zhanghengdev/MutualGuide at fd2c4cc), imported from a folder given on the command line, on
the CPU. Nothing of the seed is in this repository; extract it with

    /work/notes/extract_seed.sh /tmp/seed        # or: git -C <clone> archive fd2c4cc | tar -x -C /tmp/seed

The seed calls .cuda() everywhere; `import_seed` makes it a no-op for this process.
"""
import importlib
import os
import sys

import torch


def import_seed(seed_repo, *modules):
    """The seed's modules by dotted name (e.g. "data.data_augment", "models.detector"), importable on the CPU."""
    if not os.path.isfile(os.path.join(seed_repo, "main.py")):
        raise FileNotFoundError(f"--seed-repo {seed_repo!r} is not a checkout of the seed (no main.py in it)")
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    if seed_repo not in sys.path:
        sys.path.insert(0, seed_repo)
    loaded = [importlib.import_module(name) for name in modules]
    return loaded[0] if len(loaded) == 1 else loaded


def seed_networks(name):
    """Our MODEL.BACKBONE.NAME / MODEL.NECK.NAME -> the seed's `--backbone` / `--neck` value."""
    return {
        "VGG16": "vgg16", "ResNet18": "resnet18", "RepVGG": "repvgg", "ShuffleNetV2": "shufflenet",
        "SSD": "ssd", "FPN": "fpn", "PAFPN": "pafpn",
    }[name]
