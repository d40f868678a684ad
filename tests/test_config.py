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

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import mutual_guide
from conftest import ROOT

CONFIG_DIR = os.path.join(ROOT, "configs")
NAME = re.compile(r"mg_(vgg16|resnet18|repvgg|shufflenet)_(ssd|fpn|pafpn|rfb)_(voc|coco)(_512)?\.yaml$")
BACKBONES = {"vgg16": "VGG16", "resnet18": "ResNet18", "repvgg": "RepVGG", "shufflenet": "ShuffleNetV2"}


def load(path, *opts):
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def test_contract_keys_declared():
    cfg = get_cfg()
    mutual_guide.add_mutual_guide_config(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "MutualGuideDetector"
    assert cfg.MODEL.MUTUAL_GUIDE.ENABLED is True
    assert cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES == 80
    assert cfg.INPUT.SIZE == 320
    assert cfg.MODEL.BACKBONE.NAME == "VGG16" and cfg.MODEL.NECK.NAME == "FPN"
    assert tuple(cfg.MODEL.PIXEL_MEAN) == (104.0, 117.0, 123.0) and tuple(cfg.MODEL.PIXEL_STD) == (1.0, 1.0, 1.0)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineFloorLR" and cfg.SOLVER.WARMUP_ITERS == 500


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


def test_amp_is_refused_without_cuda():
    from mutual_guide.engine import check_amp_supported

    cfg = load(os.path.join(CONFIG_DIR, "mg_resnet18_ssd_voc.yaml"), "SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cpu")
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED"):
        check_amp_supported(cfg)


def test_entry_points_exist():
    import train_net
    from detectron2.engine import DefaultTrainer

    assert issubclass(train_net.Trainer, DefaultTrainer)
    assert callable(train_net.setup) and callable(train_net.main)
