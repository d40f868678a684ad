"""The config contract: keys, config files, and models built from them without touching the network."""
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request

import pytest
import torch
from conftest import ROOT

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import mutual_guide

CONFIG_DIR = os.path.join(ROOT, "configs")
NAME = re.compile(r"mg_(vgg16|resnet18|repvgg|shufflenet)_(ssd|fpn|pafpn|rfb)_(voc|coco)(_512)?\.yaml$")
BACKBONES = {"vgg16": "VGG16", "resnet18": "ResNet18", "repvgg": "RepVGG", "shufflenet": "ShuffleNetV2"}


def load(path, *opts):
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def _flat(tree, prefix=""):
    """{"A.B.C": value} of a nested dict (a YAML file as loaded), without _BASE_."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif key != "_BASE_":
            out[prefix + key] = value
    return out


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def repeated_values(path):
    """The keys `path` sets to the value it would inherit anyway: from its _BASE_, or (a file without one, or its
    base) from detectron2's defaults with the keys add_mutual_guide_config declares."""
    import yaml

    with open(path) as f:
        own = yaml.safe_load(f)
    inherited = get_cfg()
    mutual_guide.add_mutual_guide_config(inherited)
    if "_BASE_" in own:
        inherited.merge_from_file(os.path.join(os.path.dirname(path), own["_BASE_"]))
    merged = load(path)
    # VERSION stamps the file's format (detectron2 guesses and warns without it): not a value
    return sorted(k for k in _flat(own) if k != "VERSION" and _value(merged, k) == _value(inherited, k))


def test_base_configs_hold_only_what_differs_from_what_they_inherit(tmp_path):
    for name in ("Base-MutualGuide.yaml", "Base-VOC.yaml", "Base-COCO.yaml", "Base-RetinaNet-MG.yaml"):
        assert repeated_values(os.path.join(CONFIG_DIR, name)) == [], name
    # the check can fail: a base that restates add_mutual_guide_config's input size and class count, and
    # detectron2's momentum; a file of its own that restates detectron2's ResNet depth
    shutil.copy(os.path.join(CONFIG_DIR, "Base-MutualGuide.yaml"), tmp_path / "Base-MutualGuide.yaml")
    (tmp_path / "Base-COCO.yaml").write_text(
        '_BASE_: "Base-MutualGuide.yaml"\nINPUT:\n  SIZE: 320\nMODEL:\n  MUTUAL_GUIDE:\n    NUM_CLASSES: 80\n'
        "SOLVER:\n  MAX_ITER: 10\n  MOMENTUM: 0.9\n"
    )
    assert repeated_values(str(tmp_path / "Base-COCO.yaml")) == [
        "INPUT.SIZE", "MODEL.MUTUAL_GUIDE.NUM_CLASSES", "SOLVER.MOMENTUM"
    ]
    (tmp_path / "Base-RetinaNet.yaml").write_text(
        'MODEL:\n  META_ARCHITECTURE: "MutualGuideRetinaNet"\n  RESNETS:\n    DEPTH: 50\n'
    )
    assert repeated_values(str(tmp_path / "Base-RetinaNet.yaml")) == ["MODEL.RESNETS.DEPTH"]


def test_add_mutual_guide_config_sets_no_key_of_detectron2():
    """Its keys are new ones only; detectron2's keys take their values from the YAML files (Base-MutualGuide.yaml)."""
    import yaml

    detectron2 = _flat(yaml.safe_load(get_cfg().dump()))
    ours = get_cfg()
    assert mutual_guide.add_mutual_guide_config(ours) is ours
    ours = _flat(yaml.safe_load(ours.dump()))
    assert {k: v for k, v in detectron2.items() if ours[k] != v} == {}
    assert {"INPUT.SIZE", "MODEL.NECK.NAME", "MODEL.MUTUAL_GUIDE.ENABLED", "DATASETS.BOX_CONVENTION"} < set(ours) - set(
        detectron2)


def config_reads(sources):
    """(file, key) of every `cfg.A.B` the sources read, also through an alias (`mg = cfg.MODEL.MUTUAL_GUIDE`)."""
    key = r"((?:[A-Z][A-Z0-9_]*\.)*[A-Z][A-Z0-9_]*)\b"
    reads = set()
    for path in sources:
        with open(path) as f:
            text = f.read()
        reads |= {(path, k) for k in re.findall(r"\bcfg\." + key, text)}
        for alias, base in re.findall(r"\b(\w+) = cfg\." + key + r"\s*$", text, flags=re.M):
            reads |= {(path, f"{base}.{k}") for k in re.findall(rf"\b{alias}\.([A-Z][A-Z0-9_]*)\b", text)}
    return reads


def test_every_key_read_is_declared(tmp_path):
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    sources = [os.path.join(ROOT, f) for f in ("train_net.py", "demo.py")]
    for folder in ("projects/MutualGuide/mutual_guide", "tools", "benchmarks", "parity"):
        sources += glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)

    def undeclared(reads):
        missing = []
        for path, key in sorted(reads):
            try:
                _value(cfg, key)
            except KeyError:
                missing.append(f"{os.path.relpath(path, ROOT)}: {key}")
        return missing

    reads = config_reads(sources)
    assert len(reads) > 100  # the scan does find the reads
    assert undeclared(reads) == []
    # the check can fail: a key read directly and one read through an alias, neither declared
    (tmp_path / "neck.py").write_text("norm = cfg.MODEL.NECK.NORM\nmg = cfg.MODEL.MUTUAL_GUIDE\nx = mg.TEMPERATURE\n")
    assert [m.split(": ")[1] for m in undeclared(config_reads([str(tmp_path / "neck.py")]))] == [
        "MODEL.MUTUAL_GUIDE.TEMPERATURE", "MODEL.NECK.NORM"
    ]


def test_every_config_file_is_named_and_consistent():
    files = sorted(glob.glob(os.path.join(CONFIG_DIR, "mg_*.yaml")))
    assert os.path.join(CONFIG_DIR, "mg_vgg16_fpn_coco.yaml") in files
    assert len(files) == 4 * 4 * 2 * 2
    for path in files:
        match = NAME.search(path)
        assert match, f"{path} does not follow mg_<backbone>_<neck>_<dataset>[_512].yaml"
        backbone, neck, dataset, big = match.groups()
        cfg = load(path)
        assert cfg.MODEL.BACKBONE.NAME == BACKBONES[backbone], path
        assert cfg.MODEL.NECK.NAME == neck.upper(), path
        assert cfg.INPUT.SIZE == (512 if big else 320), path
        assert cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES == (20 if dataset == "voc" else 80), path
        assert cfg.DATASETS.TEST == (("mg_voc_2007_test",) if dataset == "voc" else ("mg_coco_2017_val",)), path
        # a consistent convention by default: the authors' shifted one is asked for by name only
        assert cfg.DATASETS.BOX_CONVENTION == "detectron2", path


def _generate(*args):
    script = os.path.join(ROOT, "tools", "generate_configs.py")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True)


def test_leaf_configs_are_the_generators_output(tmp_path):
    result = _generate("--check")
    assert result.returncode == 0, result.stdout
    # the check can fail: a hand edit and a stray file in a copy of the folder are both named
    copy = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, copy)
    with open(copy / "mg_vgg16_fpn_coco.yaml", "a") as f:
        f.write("SOLVER:\n  BASE_LR: 0.02\n")
    (copy / "mg_vgg16_fpn_coco_640.yaml").write_text('_BASE_: "Base-COCO.yaml"\n')
    result = _generate("--check", "--config-dir", str(copy))
    assert result.returncode == 1
    assert "mg_vgg16_fpn_coco.yaml" in result.stdout and "mg_vgg16_fpn_coco_640.yaml (not generated" in result.stdout


def test_schedule_is_the_papers():
    voc = load(os.path.join(CONFIG_DIR, "mg_vgg16_fpn_voc.yaml"))
    coco = load(os.path.join(CONFIG_DIR, "mg_vgg16_fpn_coco.yaml"))
    # 250 epochs of VOC 07+12 trainval (16551 images) and 140 of COCO train2017 (118287) at batch 32; the seed's
    # VOC epoch is 16551 // 32 iterations (it drops the incomplete batch).
    assert voc.SOLVER.MAX_ITER == (16551 // 32) * 250
    assert coco.SOLVER.MAX_ITER == -(-118287 // 32) * 140
    for cfg in (voc, coco):
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MOMENTUM) == (0.01, 32, 0.9)
        assert cfg.SOLVER.WEIGHT_DECAY == 5e-4 and cfg.SOLVER.WEIGHT_DECAY_BIAS == 0 == cfg.SOLVER.WEIGHT_DECAY_NORM


def test_build_model_never_reaches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("build_model tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # The config asks for ImageNet weights: building must still not download (the trainer loads them).
    cfg = load(os.path.join(CONFIG_DIR, "mg_vgg16_fpn_coco.yaml"), "MODEL.DEVICE", "cpu")
    assert cfg.MODEL.BACKBONE.PRETRAINED == "torchvision"
    model = build_model(cfg)
    assert type(model).__name__ == "MutualGuideDetector"


def test_input_size_must_be_a_multiple_of_64():
    cfg = load(os.path.join(CONFIG_DIR, "mg_resnet18_ssd_voc.yaml"), "INPUT.SIZE", "300", "MODEL.DEVICE", "cpu")
    with pytest.raises(ValueError, match="INPUT.SIZE"):
        build_model(cfg)


def test_cuda_is_refused_before_anything_is_built_on_a_machine_without_it(monkeypatch, tmp_path):
    """The paper configs keep detectron2's MODEL.DEVICE "cuda": without CUDA, setup stops at once, naming the key."""
    import train_net

    from mutual_guide.engine.preflight import check_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = os.path.join(CONFIG_DIR, "mg_shufflenet_ssd_voc.yaml")
    args = train_net.argument_parser().parse_args(["--config-file", config, "OUTPUT_DIR", str(tmp_path / "run")])
    with pytest.raises(ValueError, match=r"MODEL.DEVICE: .*CUDA is not available.*set `MODEL.DEVICE cpu`"):
        train_net.setup(args)
    assert not (tmp_path / "run").exists()  # refused before the output folder or the log is made
    check_config(load(config, "MODEL.DEVICE", "cpu"))  # the fix the message gives is enough


@pytest.mark.parametrize("name", ["shapes_2020", "trees_2020", "trees_2023"])
def test_experiment_configs_build_their_detector(name):
    """configs/experiments/ (docs/experiments.md): each resolves and builds; the 2023 one is the authors' recipe."""
    cfg = load(os.path.join(CONFIG_DIR, "experiments", f"{name}.yaml"), "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    assert cfg.SOLVER.MAX_ITER == 400 and cfg.TEST.EVAL_PERIOD == 100 and not cfg.INPUT.MG_AUGMENT
    if name == "trees_2023":
        assert model.network == "mg2023" and cfg.MODEL.MUTUAL_GUIDE.RECIPE == "authors_2023" and cfg.MODEL_EMA.ENABLED
    else:
        assert model.network == "mg2020" and cfg.MODEL.MUTUAL_GUIDE.RECIPE == "paper"
