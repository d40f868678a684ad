"""tools/learning_curves.py: the curves of a setting's runs from their metrics.json, mean and range per iteration."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import learning_curves  # noqa: E402


def fake_run(folder, values, max_iter=300):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(f"SOLVER:\n  MAX_ITER: {max_iter}\n")
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for k, value in enumerate(values):
            f.write(json.dumps({"iteration": 19 + 100 * k, "total_loss": 1.0}) + "\n")
            # periodic evaluations at 99 and 199, the final one logged one past the last iteration (300)
            iteration = 300 if k == len(values) - 1 else 99 + 100 * k
            f.write(json.dumps({"iteration": iteration, "bbox/AP50": value}) + "\n")
    return str(folder)


def test_mean_and_range_per_iteration_and_the_plot(tmp_path, capsys):
    a = fake_run(tmp_path / "a", [10.0, 20.0, 30.0])
    b = fake_run(tmp_path / "b", [14.0, 22.0, 40.0])
    iterations, values = learning_curves.setting_curves([a, b], "bbox/AP50")
    assert iterations == [100, 200, 300]
    assert values.mean(axis=0).tolist() == [12.0, 21.0, 35.0]
    out = tmp_path / "curves.png"
    assert learning_curves.main(["--setting", f"x={a},{b}", "--output", str(out)]) == 0
    last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| x ")][-1]
    assert [cell.strip() for cell in last.strip("|").split("|")] == ["x", "300", "35.00", "30.00 - 40.00", "30.00 40.00"]
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError, match="--overwrite"):
        learning_curves.main(["--setting", f"x={a}", "--output", str(out)])


def test_a_run_without_evaluations_is_named(tmp_path):
    folder = tmp_path / "r"
    os.makedirs(folder)
    (folder / "metrics.json").write_text(json.dumps({"iteration": 5, "total_loss": 1.0}) + "\n")
    with pytest.raises(SystemExit, match="no 'bbox/AP50' logged"):
        learning_curves.setting_curves([str(folder)], "bbox/AP50")
