"""What the assignment gave each object, on hand-made labels whose counts are written out, and in a training run."""
import json
import math

import pytest
import torch

import train_net
from mutual_guide.modeling.assignment import AnchorLabels
from mutual_guide.modeling.assignment_stats import assignment_statistics, statistic_names

C = 3  # classes; label C is background


def _labels():
    # image 0: box 0 small (10 x 10), box 1 large (100 x 100); image 1: one medium box (40 x 40), no positive at all.
    # anchors of image 0: 0, 1 -> box 0 (class), 2 -> box 1, 3 ignored, 4 and 5 background;
    # regression positives: 1 -> box 0, 2 and 4 -> box 1.
    cls_labels = torch.tensor([[1, 1, 2, -1, C, C], [C] * 6])
    cls_idx = torch.tensor([[0, 0, 1, 1, 0, 0], [0] * 6])
    reg_mask = torch.tensor([[False, True, True, False, True, False], [False] * 6])
    reg_idx = torch.tensor([[0, 0, 1, 0, 1, 0], [0] * 6])
    labels = AnchorLabels(cls_labels, reg_mask, reg_idx, cls_idx, torch.full_like(cls_labels, C))
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 100, 100]], [[5.0, 5, 45, 45], [0, 0, 0, 0]]])
    valid = torch.tensor([[True, True], [True, False]])
    return labels, boxes, valid


def test_counts_per_object_and_size():
    values = dict(zip(statistic_names(), assignment_statistics(*_labels(), C).tolist()))
    # box 0: 2 classification positives, 1 regression positive, 1 of it also its classification positive;
    # box 1: 1, 2, 1; the medium box: 0, 0, 0. Over the three: 3 / 3, 3 / 3, both 2 of the 3 regression positives.
    expected = {
        "all": [3, 1.0, 1.0, 2 / 3, 1 / 3, 1 / 3],
        "small": [1, 2.0, 1.0, 1.0, 0.0, 0.0],
        "large": [1, 1.0, 2.0, 0.5, 0.0, 0.0],
    }
    for size, numbers in expected.items():
        got = [values[f"assignment/{size}/{name}"] for name in
               ("objects", "cls_positives_per_object", "reg_positives_per_object", "both_share",
                "objects_without_cls", "objects_without_reg")]
        assert got == pytest.approx(numbers), size
    assert values["assignment/medium/objects"] == 1 and values["assignment/medium/objects_without_cls"] == 1.0
    assert math.isnan(values["assignment/medium/both_share"])  # no regression positive to share


@pytest.mark.slow
def test_a_training_run_logs_them_and_summarises_them(tmp_path, train_args, shapes_dataset):
    info = shapes_dataset(tmp_path / "data")
    out = tmp_path / "out"
    trainer = train_net.Trainer(train_net.setup(train_args(
        info, out, "SOLVER.MAX_ITER", 3, "MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD", 1)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(out / "metrics.json") as f:
        logged = [json.loads(line) for line in f]
    assert any("assignment/all/cls_positives_per_object" in line for line in logged)
    summary = json.loads((out / "assignment_stats.json").read_text())["means_over_steps"]
    assert summary["all"]["objects"] > 0 and summary["all"]["cls_positives_per_object"] > 0
