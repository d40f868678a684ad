"""`make clean` removes what `make demo` and the tests write, and nothing else."""
import os
import shutil
import subprocess

import pytest
from conftest import ROOT

KEPT = [
    "output/mg_vgg16_fpn_voc/model_final.pth",  # real training runs
    "output/mg_vgg16_fpn_voc_iou/metrics.json",
    ".venv/lib/__pycache__/x.pyc",
    "configs/Base-VOC.yaml",
    "datasets/VOCdevkit/VOC2007/Annotations/000001.xml",
]
REMOVED = [
    "output/demo/model_final.pth",  # make demo
    "output/demo/shapes/images/train_00000.jpg",
    ".pytest_cache/v/cache/nodeids",  # make test
    "tests/__pycache__/conftest.cpython-311.pyc",
    "tests/modeling/__pycache__/test_anchors.cpython-311-pytest-8.0.0.pyc",  # the test folders' caches too
    "projects/MutualGuide/mutual_guide/__pycache__/head.cpython-311.pyc",
]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_clean_keeps_training_runs(tmp_path):
    shutil.copy(os.path.join(ROOT, "Makefile"), tmp_path / "Makefile")
    for name in KEPT + REMOVED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert [n for n in KEPT if not (tmp_path / n).exists()] == []
    assert [n for n in REMOVED if (tmp_path / n).exists()] == []
    assert not (tmp_path / "output" / "demo").exists() and (tmp_path / "output").is_dir()
