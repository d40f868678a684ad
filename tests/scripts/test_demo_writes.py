"""demo.py writes nothing over an input or an earlier output unless --overwrite: refused before any prediction."""
import os
import uuid

import cv2
import demo
import numpy as np
import pytest
import torch
from conftest import ROOT

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mutual_guide import add_mutual_guide_config
from mutual_guide.data import make_synthetic_dataset, register_custom_datasets

CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yaml")


@pytest.fixture(scope="module")
def weights_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_writes")
    name = f"dw{uuid.uuid4().hex[:6]}"
    info = make_synthetic_dataset(str(root / "data"), fmt="coco", num_train=1, num_test=2, seed=1, name=name)
    opts = ["MODEL.DEVICE", "cpu", "INPUT.SIZE", "64", "DATASETS.CUSTOM", str(info["custom_specs"]),
            "DATASETS.TEST", f"('{name}_test',)"]
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(list(opts))
    register_custom_datasets(cfg)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, root / "model.pth")
    return info, opts + ["MODEL.WEIGHTS", str(root / "model.pth")]


def _run(images, output, *extra, opts):
    argv = ["--config-file", CONFIG, "--input", images, "--output", output, *extra, "--opts", *opts]
    try:
        return demo.main([str(a) for a in argv])
    except SystemExit as e:
        return ("exit", e.code)


@pytest.mark.slow
def test_json_never_replaces_an_input_or_an_existing_file(weights_and_data, tmp_path, capsys):
    info, opts = weights_and_data
    images = os.path.join(info["splits"]["test"]["image_root"], "test_*.jpg")
    json_file = info["splits"]["test"]["json_file"]
    before = open(json_file, "rb").read()
    # the dataset's own annotation file, even with --overwrite
    assert _run(images, tmp_path / "a", "--json", json_file, "--overwrite", opts=opts) == ("exit", 2)
    assert "would overwrite an input of this run" in capsys.readouterr().err
    assert open(json_file, "rb").read() == before
    # an input image
    image = os.path.join(os.path.dirname(images), "test_00000.jpg")
    assert _run(images, tmp_path / "b", "--json", image, opts=opts) == ("exit", 2)
    assert not os.path.exists(tmp_path / "b")  # refused before any drawing
    # an existing file: refused, then replaced with --overwrite
    (tmp_path / "p.json").write_text("precious")
    assert _run(images, tmp_path / "c", "--json", tmp_path / "p.json", opts=opts) == ("exit", 2)
    err = capsys.readouterr().err
    assert "already exist(s)" in err and "add --overwrite to replace" in err
    assert (tmp_path / "p.json").read_text() == "precious"
    assert _run(images, tmp_path / "d", "--json", tmp_path / "p.json", "--overwrite", opts=opts) == 2
    assert (tmp_path / "p.json").read_text().startswith("{")


@pytest.mark.slow
def test_drawings_never_replace_earlier_drawings_without_overwrite(weights_and_data, tmp_path):
    info, opts = weights_and_data
    images = os.path.join(info["splits"]["test"]["image_root"], "test_*.jpg")
    assert _run(images, tmp_path / "out", opts=opts) == 2
    drawing = tmp_path / "out" / sorted(os.listdir(tmp_path / "out"))[0]
    cv2.imwrite(str(drawing), np.zeros((8, 8, 3), np.uint8))  # stands for an earlier drawing
    assert _run(images, tmp_path / "out", opts=opts) == ("exit", 2)
    assert cv2.imread(str(drawing)).shape == (8, 8, 3)
    assert _run(images, tmp_path / "out", "--overwrite", opts=opts) == 2
    assert cv2.imread(str(drawing)).shape != (8, 8, 3)
