"""
Every config of configs/ resolves to the values recorded in tests/snapshots/resolved_configs.json (written at
commit c0ef446 by tools/snapshot_resolved_configs.py, whose docstring says how to regenerate it): moving values
between add_mutual_guide_config and the base YAML files must not change what any config means.
"""
import json
import os

import pytest
from conftest import ROOT

from detectron2.config import get_cfg

SNAPSHOT = os.path.join(ROOT, "tests", "snapshots", "resolved_configs.json")

# Keys whose resolved value differs from the snapshot on purpose, each with the reason. Keys the snapshot does not
# have (declared since, e.g. INPUT.DATASET_MAPPER) are not compared.
CHANGED_ON_PURPOSE = {
    "MODEL.DEVICE": "the snapshot was taken on a machine without CUDA, where add_mutual_guide_config then chose "
    "'cpu'; now detectron2's default 'cuda' applies unless a config sets the key (demo_shapes.yaml: 'cpu'), and "
    "train_net refuses 'cuda' on a machine without CUDA, naming the key",
    "MODEL.BACKBONE.FREEZE_AT": "our backbones did not read detectron2's key (2) before; now that they do, the paper "
    "configs set 0 (the paper trains every layer, as before), and the RetinaNet configs keep detectron2's 2",
}
MISSING = "<missing>"


def differences(snapshot, resolved):
    """'key: snapshot value -> resolved value' of every key of `snapshot` resolved otherwise (or no longer there),
    but those of CHANGED_ON_PURPOSE."""
    out = []
    for key, expected in sorted(snapshot.items()):
        got = resolved.get(key, MISSING)
        if key not in CHANGED_ON_PURPOSE and got != expected:
            out.append(f"{key}: {expected!r} -> {got!r}")
    return out


@pytest.fixture(scope="module")
def resolved(load_tool):
    """{config file: flat resolved config} of today's configs/, through JSON as the snapshot was (lists, not tuples)."""
    tool = load_tool("snapshot_resolved_configs")
    return json.loads(json.dumps(tool.resolved_configs(os.path.join(ROOT, "configs"))))


@pytest.fixture(scope="module")
def snapshot():
    with open(SNAPSHOT) as f:
        return json.load(f)


def test_every_config_resolves_to_the_snapshots_values(resolved, snapshot):
    # a config added or removed is a change of its own: regenerate the snapshot with it
    assert sorted(resolved) == sorted(snapshot)
    assert len(snapshot) == 79 and all(len(values) > 200 for values in snapshot.values())
    changed = {name: differences(snapshot[name], resolved[name]) for name in snapshot}
    assert {name: lines for name, lines in changed.items() if lines} == {}


def test_the_device_is_detectron2s_unless_a_config_sets_it(resolved):
    default = get_cfg().MODEL.DEVICE
    assert default == "cuda"
    assert {name: values["MODEL.DEVICE"] for name, values in resolved.items() if values["MODEL.DEVICE"] != default} \
        == {"demo_shapes.yaml": "cpu"}


def test_differences_names_each_changed_or_missing_key():
    snapshot = {"SOLVER.BASE_LR": 0.01, "INPUT.SIZE": 320, "MODEL.DEVICE": "cpu", "SOLVER.STEPS": [30000]}
    resolved = {"SOLVER.BASE_LR": 0.02, "MODEL.DEVICE": "cuda", "SOLVER.STEPS": [30000], "INPUT.DATASET_MAPPER": "x"}
    assert differences(snapshot, resolved) == ["INPUT.SIZE: 320 -> '<missing>'", "SOLVER.BASE_LR: 0.01 -> 0.02"]
