"""
The comparison of settings (evaluation/comparison.py, tools/compare_runs.py) on synthetic records with known
answers: identical images give a zero-width interval, a setting against itself is within the noise, a uniformly
better one is not, the bootstrap of a mean has the analytic standard error, and Student's t is the table's.
"""
import json
import os

import numpy as np
import pytest

from mutual_guide.evaluation.comparison import (
    LARGER,
    WITHIN,
    compare_settings,
    resample_counts,
    run_from_records,
    student_t_quantile,
)
from mutual_guide.evaluation.records import write_records

OBJECT = [10.0, 10.0, 40.0, 40.0]  # 30 x 30 (COCO: exclusive pixels)


def right(d):
    """The object moved right by d: IoU (30 - d) / (30 + d)."""
    return [OBJECT[0] + d, OBJECT[1], OBJECT[2] + d, OBJECT[3]]


def synthetic(shifts, scores, dataset="synthetic", false_scores=None):
    """COCO records: image i has one object and one detection moved right by shifts[i] scoring scores[i], and
    optionally a false detection far away scoring false_scores[i]."""
    images = []
    for i, (d, s) in enumerate(zip(shifts, scores)):
        det = [[0, float(s), *right(float(d))]]
        if false_scores is not None:
            det.append([0, float(false_scores[i]), 80.0, 80.0, 100.0, 100.0])
        images.append({"image_id": i, "file_name": f"{i}.jpg", "gt": [[0, *OBJECT, 0, 900.0]], "det": det,
                       "removed": []})
    return {"dataset": dataset, "classes": ["thing"], "metric": "COCO", "nms_thresh": 0.5, "removed_recorded": True,
            "images": images}


def test_a_weighted_resample_is_the_set_with_its_images_repeated():
    # The bootstrap recomputes each figure with image weights; the same draw made explicit (an image drawn k
    # times copied k times, under new ids) gives the same figures.
    rng = np.random.RandomState(6)
    records = synthetic(rng.uniform(0, 12, 25), rng.uniform(0.1, 1, 25), false_scores=rng.uniform(0, 1, 25))
    run = run_from_records(records)
    for counts in resample_counts(25, 3, np.random.default_rng(0)):
        images = [{**image, "image_id": 1000 * j + image["image_id"]}
                  for image, k in zip(records["images"], counts) for j in range(int(k))]
        explicit = run_from_records({**records, "images": images}).figures()
        weighted = run.figures(counts)
        for figure in ("AP", "AP50", "AP75", "spearman", "mean_iou"):
            assert weighted[figure] == pytest.approx(explicit[figure], abs=1e-9), figure


def test_identical_images_give_a_zero_width_interval():
    run = run_from_records(synthetic([3.0] * 30, [0.8] * 30, false_scores=[0.9] * 30))
    result = compare_settings({"a": [run], "b": [run]}, resamples=50)
    for figure in ("AP", "AP50", "AP75", "mean_iou"):
        lo, hi = result["settings"]["a"]["figures"][figure]["interval"]
        assert hi - lo == pytest.approx(0.0, abs=1e-9), figure
    assert result["settings"]["a"]["figures"]["AP50"]["value"] == pytest.approx(50.0, abs=0.6)  # precision 1/2


def test_the_same_records_twice_are_within_the_noise():
    rng = np.random.RandomState(0)
    records = synthetic(rng.uniform(0, 12, 60), rng.uniform(0.1, 1, 60), false_scores=rng.uniform(0, 1, 60))
    result = compare_settings({"a": [run_from_records(records)], "b": [run_from_records(records)]}, resamples=200)
    difference = result["differences"][0]
    assert difference["paired"]
    for figure, x in difference["figures"].items():
        if x["difference"] is None:
            continue
        assert x["difference"] == 0.0 and x["interval"][0] <= 0.0 <= x["interval"][1], figure
        assert x["verdict"] == WITHIN, figure


def test_a_uniformly_better_setting_is_larger_than_the_noise():
    rng = np.random.RandomState(1)
    scores, false_scores = rng.uniform(0.1, 1, 60), rng.uniform(0, 1, 60)
    better = synthetic(rng.uniform(0, 2, 60), scores, false_scores=false_scores)  # IoU >= 0.875
    worse = synthetic(rng.uniform(5, 8, 60), scores, false_scores=false_scores)  # IoU 0.58-0.71
    result = compare_settings({"better": [run_from_records(better)], "worse": [run_from_records(worse)]},
                              resamples=200)
    figures = result["differences"][0]["figures"]
    assert figures["AP75"]["difference"] > 50 and figures["AP75"]["verdict"] == LARGER
    assert figures["mean_iou"]["verdict"] == LARGER
    assert figures["AP50"]["verdict"] == WITHIN  # both find every object at IoU 0.5, with the same scores


@pytest.mark.slow
def test_bootstrap_of_a_mean_has_the_analytic_standard_error():
    # one matched detection per image: mean_iou is a plain mean over images, standard error s / sqrt(n)
    rng = np.random.RandomState(2)
    n = 400
    records = synthetic(rng.uniform(0, 9, n), rng.uniform(0.1, 1, n))
    run = run_from_records(records)
    ious = run.alignment.iou[run.alignment.matched]
    assert len(ious) == n
    standard_error = ious.std(ddof=1) / np.sqrt(n)
    result = compare_settings({"a": [run]}, resamples=1000, seed=3)
    lo, hi = result["settings"]["a"]["figures"]["mean_iou"]["interval"]
    assert (hi - lo) / (2 * 1.959964) == pytest.approx(standard_error, rel=0.1)
    assert lo < ious.mean() < hi


def test_seed_spread_widens_the_interval_of_a_difference():
    rng = np.random.RandomState(4)
    shifts, scores = rng.uniform(0, 10, 50), rng.uniform(0.1, 1, 50)
    a = [run_from_records(synthetic(shifts + s, scores)) for s in (0.0, 0.4, 0.8)]
    b = [run_from_records(synthetic(shifts + s, scores)) for s in (0.2, 1.6)]
    result = compare_settings({"a": a, "b": b}, resamples=100)
    seeds = result["settings"]["a"]["figures"]["mean_iou"]["seeds"]
    assert seeds["min"] < seeds["mean"] < seeds["max"] and seeds["std"] > 0 and len(seeds["values"]) == 3
    x = result["differences"][0]["figures"]["mean_iou"]
    assert x["seed_term"] > 0 and x["interval"][0] < x["bootstrap_interval"][0]
    assert x["interval"][1] > x["bootstrap_interval"][1]


def test_runs_of_one_setting_must_share_their_test_set():
    a = run_from_records(synthetic([1.0] * 5, [0.5] * 5))
    b = run_from_records(synthetic([1.0] * 6, [0.5] * 6))
    with pytest.raises(ValueError, match="other images"):
        compare_settings({"a": [a, b], "c": [a]}, resamples=5)
    assert not compare_settings({"a": [a], "b": [b]}, resamples=5)["differences"][0]["paired"]


def test_student_t_quantiles_are_the_tables():
    for df, expected in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (np.inf, 1.9600)):
        assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=2e-3), df


@pytest.mark.slow
def test_compare_runs_tool(tmp_path, load_tool, capsys):
    rng = np.random.RandomState(5)
    folders = {}
    for name, low, high in (("near", 0, 3), ("far", 4, 9)):
        folders[name] = []
        for seed in range(2):
            records = synthetic(rng.uniform(low, high, 40), rng.uniform(0.1, 1, 40), dataset="shapes_test",
                                false_scores=rng.uniform(0, 1, 40))
            run_dir = tmp_path / f"{name}_{seed}"
            write_records(str(run_dir / "eval" / "shapes_test"), {k: v for k, v in records.items() if k != "images"},
                          records["images"])
            folders[name].append(str(run_dir))
    tool = load_tool("compare_runs")
    argv = [f"--setting=near={','.join(folders['near'])}", f"--setting=far={','.join(folders['far'])}",
            "--resamples", "100", "--output-dir", str(tmp_path / "cmp")]
    result = tool.main(argv)
    printed = capsys.readouterr().out
    assert "Setting near: 2 run(s), 40 test images of shapes_test" in printed and "near - far (paired" in printed
    assert result["differences"][0]["figures"]["AP75"]["verdict"] == LARGER
    with open(tmp_path / "cmp" / "comparison.json") as f:
        assert json.load(f)["method"]["resamples"] == 100
    assert os.path.getsize(tmp_path / "cmp" / "comparison.png") > 10000
    with pytest.raises(FileExistsError, match="--overwrite"):
        tool.main(argv)
    with pytest.raises(SystemExit):
        tool.main([f"--setting=near={folders['near'][0]}"])  # one setting: nothing to compare
