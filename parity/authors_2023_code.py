"""
Modules of the authors' current code (zhanghengdev/MutualGuide at 108b4a8), loaded from a checkout given on the
command line. Nothing of their code is in this repository; get it with

    git clone https://github.com/zhanghengdev/MutualGuide <clone> && git -C <clone> checkout 108b4a8

Modules are loaded from their files (not through their packages, whose __init__ imports datasets and CUDA code),
and no bytecode is written into the checkout.
"""
import importlib.util
import os
import sys

AUTHORS_REPO_HELP = "a checkout of zhanghengdev/MutualGuide at 108b4a8 (the authors' current code)"


def add_authors_repo_argument(parser):
    return parser.add_argument("--authors-repo", required=True, metavar="DIR", help=AUTHORS_REPO_HELP)


def load_authors_module(repo, relative_path):
    """The module of `repo`/`relative_path` (e.g. "data/data_augment.py"), under a name of its own."""
    path = os.path.join(repo, relative_path)
    if not os.path.isfile(os.path.join(repo, "train.py")) or not os.path.isfile(path):
        raise FileNotFoundError(f"--authors-repo {repo!r} is not a checkout of the authors' code at 108b4a8 "
                                f"(train.py or {relative_path} missing)")
    name = "authors_2023_" + relative_path[:-3].replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    written = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = written
    return module
