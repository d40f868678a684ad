"""An export interrupted half-way leaves the previous file (or none) under its name, and no temporary file."""
import os

import pytest
import torch

from mutual_guide.export import export_onnx, export_torchscript


def _fail_half_way(module, args, path, **kwargs):
    with open(path, "wb") as f:
        f.write(b"half an onnx file")
    raise KeyboardInterrupt


def test_interrupted_onnx_export_keeps_the_previous_file(tmp_path, monkeypatch, make_cfg):
    from detectron2.modeling import build_model

    model = build_model(make_cfg(size=64))
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")
    monkeypatch.setattr(torch.onnx, "export", _fail_half_way)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, str(target))
    assert target.read_bytes() == b"the previous export"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_interrupted_torchscript_export_leaves_nothing(tmp_path, monkeypatch, make_cfg):
    from detectron2.modeling import build_model

    model = build_model(make_cfg(size=64))
    target = tmp_path / "model.ts"

    def save_half(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.jit.ScriptModule, "save", save_half)
    with pytest.raises(KeyboardInterrupt):
        export_torchscript(model, str(target))
    assert os.listdir(tmp_path) == []
