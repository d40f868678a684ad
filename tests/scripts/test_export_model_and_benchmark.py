"""tools/export_model.py and tools/benchmark.py as a user runs them, on the CPU, and on CUDA where there is one."""
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT

CONFIG = os.path.join(ROOT, "configs", "mg_shufflenet_ssd_voc.yaml")
SMALL = ["INPUT.SIZE", "128"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


@pytest.fixture
def photo(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    path = str(tmp_path / "photo.jpg")
    cv2.imwrite(path, image)
    return path


def run_export(tmp_path, photo, device, capsys, load_tool):
    load_tool("export_model").main([
        "--config-file", CONFIG, "--format", "both", "--with-nms", "--allow-random-weights",
        "--output", str(tmp_path / "exported"), "--device", device, "--verify", photo, *SMALL,
    ])
    return capsys.readouterr().out


@pytest.mark.slow
def test_export_tool_verifies_on_cpu(tmp_path, photo, capsys, load_tool):
    out = run_export(tmp_path, photo, "cpu", capsys, load_tool)
    lines = [line for line in out.splitlines() if "max box difference" in line]
    assert len(lines) == 2 and all("same" in line for line in lines), out


@needs_cuda
def test_export_tool_verifies_on_cuda(tmp_path, photo, capsys, load_tool):
    out = run_export(tmp_path, photo, "cuda", capsys, load_tool)
    lines = [line for line in out.splitlines() if "max box difference" in line]
    assert len(lines) == 2 and all("same" in line for line in lines), out


@without_cuda
@pytest.mark.parametrize("tool", ["export_model", "benchmark"])
def test_tools_say_when_cuda_is_missing(tool, tmp_path, load_tool):
    argv = ["--config-file", CONFIG, "--device", "cuda"]
    if tool == "export_model":
        argv += ["--output", str(tmp_path), "--allow-random-weights"]
    with pytest.raises(SystemExit, match="CUDA is not available"):
        load_tool(tool).main(argv + SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_benchmark_tool_prints_its_figures(device, capsys, load_tool):
    load_tool("benchmark").main([
        "--config-file", CONFIG, "--device", device, "--batch-sizes", "1", "--iters", "1",
        "--assign-batch", "2", "--no-flops", "--layouts", *SMALL,
    ])
    out = capsys.readouterr().out
    for expected in ("batch 1:", "end to end", "assignment of a training batch of 2", "layout NHWC", "layout NCHW"):
        assert expected in out, out
