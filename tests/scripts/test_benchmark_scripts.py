"""
The precision benchmarks as a user runs them (benchmarks/*.py), small: each runs on the CPU, on a GPU where there
is one, and prints its ratios. Their figures are not checked here (docs/benchmarks.md has them); that they run,
take --device and print every side is.
"""
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def run(script, *args):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_layout_benchmark_times_both_layouts_in_both_dtypes(device):
    out = run("bench_precision_layout.py", "--backbones", "ShuffleNetV2", "--size", "128", "--batch", "2",
              "--num-classes", "3", "--repeats", "1", "--device", device)
    assert out.startswith(device), out
    rows = re.findall(r"^ {4}(\w+) +(NCHW|NHWC) +\d+ / +\d+ +[\d.]+x$", out, re.M)
    # forward and training step, each in float32 and the reduced dtype (bfloat16 where nothing is faster)
    assert len(rows) == 8 and {r[0] for r in rows} >= {"float32"} and len({r[0] for r in rows}) == 2, out


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_inference_benchmark_prints_its_ratios(device):
    out = run("bench_inference.py", "--config-file", os.path.join(ROOT, "configs", "mg_shufflenet_fpn_coco.yaml"),
              "--images", "1", "--repeats", "1", "--precision", "bfloat16", "--device", device, "INPUT.SIZE", "64")
    assert f"{device} (" in out.splitlines()[0], out
    assert re.search(r"^speed-up paper / ours \(PyTorch\): total [\d.]+x", out, re.M), out
    if device != "cpu":  # ONNX Runtime's session is a CPU one: no such side on a GPU
        assert not re.search(r"^onnx ", out, re.M), out


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_training_step_benchmark_prints_its_ratios(device):
    out = run("bench_train_step.py", "--size", "64", "--batch", "2", "--num-classes", "3", "--repeats", "1",
              "--precision", "bfloat16", "--device", device)
    assert f"{device} (" in out.splitlines()[0], out
    assert re.search(r"paper-style .* ours is [\d.]+x faster", out), out
