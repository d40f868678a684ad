#!/usr/bin/env python
"""
Write tests/snapshots/resolved_configs.json: for every configs/*.yaml but the Base-* files, the config as a run
resolves it (detectron2's get_cfg, add_mutual_guide_config, then the file with its _BASE_ chain), flattened to
{"MODEL.NECK.NAME": value, ...} (tuples as lists). tests/test_resolved_configs.py compares today's resolution with
it, so that moving a value between config.py and the YAML files cannot change what a config means.

The committed snapshot was written by this program's logic at commit c0ef446 (before add_mutual_guide_config
stopped setting detectron2's keys), on a machine without CUDA: its MODEL.DEVICE is "cpu" everywhere, which
add_mutual_guide_config then chose from torch.cuda.is_available().

When a resolved value changes on purpose (a new default, a schedule fixed), either list the key in
tests/test_resolved_configs.py's CHANGED_ON_PURPOSE with the reason, or regenerate the snapshot and commit it
with the change, after reading its diff (every line of it is a value some config now resolves to differently;
the entries of CHANGED_ON_PURPOSE the new snapshot records can then go):

    PYTHONPATH=projects/MutualGuide .venv/bin/python tools/snapshot_resolved_configs.py
    git diff tests/snapshots/resolved_configs.json
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, "tests", "snapshots", "resolved_configs.json")


def flat(node, prefix=""):
    """{"A.B.C": value} of a config, tuples as lists (as JSON stores them)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def resolve(path):
    """The config a run of `path` starts from, before any command-line option."""
    from detectron2.config import get_cfg

    import mutual_guide

    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def resolved_configs(config_dir):
    """{file name: flat resolved config} of every config of `config_dir` but the Base-* files."""
    out = {}
    for path in sorted(glob.glob(os.path.join(config_dir, "*.yaml"))):
        name = os.path.basename(path)
        if not name.startswith("Base-"):
            out[name] = flat(resolve(path))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", default=os.path.join(ROOT, "configs"))
    parser.add_argument("--output", default=SNAPSHOT)
    args = parser.parse_args(argv)
    configs = resolved_configs(args.config_dir)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(configs, f, indent=0, sort_keys=True)
    print(f"{len(configs)} resolved configs written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
