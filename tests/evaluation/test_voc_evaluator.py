"""The VOC evaluator on hand-made VOC folders: detectron2's numbers, and every file training reads."""
import os
import uuid

import numpy as np
import pytest
import train_net

from detectron2.data import DatasetCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator

from mutual_guide.data.builtin import register_voc_checked
from mutual_guide.evaluation.evaluators import VOCEvaluator


@pytest.mark.slow
def test_voc_files_training_accepts_are_evaluated_too(tmp_path, write_voc, voc_object, train_args):
    # Float coordinates, no <pose>/<truncated>/<difficult>, .png images, a one-line split file, no <size>:
    # training reads them, and the evaluation at the end of training reads the same files.
    root = write_voc(tmp_path / "voc", {"only": [voc_object("square", (10.5, 12, 90.5, 100), pose=False,
                                                            truncated=False)]},
                     split="trainval", size=(128, 128), ext=".png", with_size=False)
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt")) as f:
        assert f.read() == "only"
    name = f"v{uuid.uuid4().hex[:8]}"
    spec = f"root={root};split=trainval;classes=circle,square,triangle;year=2007"
    info = {"custom_specs": [f"{name}_train:voc:{spec}", f"{name}_test:voc:{spec}"]}
    trainer = train_net.Trainer(train_net.setup(train_args(info, tmp_path / "out", "SOLVER.MAX_ITER", 1)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results["bbox"]  # one test set: detectron2 returns its results unwrapped
    assert set(results) == {"AP", "AP50", "AP75"} and all(0 <= v <= 100 for v in results.values())


CLASSES = ("cat", "dog", "bird")


# ----------------------------------------------------------------------------- VOC evaluator
def _random_voc(tmp_path, write_voc, voc_object, num_images=12, seed=0):
    rng = np.random.RandomState(seed)
    images = {}
    for i in range(num_images):
        objects = []
        for _ in range(rng.randint(0, 5)):
            x0, y0 = rng.randint(1, 60), rng.randint(1, 44)
            x1, y1 = min(x0 + rng.randint(4, 40), 96), min(y0 + rng.randint(4, 30), 72)
            objects.append(voc_object(CLASSES[rng.randint(3)], (x0, y0, x1, y1), difficult=int(rng.rand() < 0.15)))
        images[f"{i:06d}"] = objects
    return write_voc(tmp_path, images, split="test", size=(96, 72))


def _jittered_predictions(seed, ground_truth_as_predictions):
    rng = np.random.RandomState(seed)

    def predict(record):
        gt_boxes, _, gt_classes = ground_truth_as_predictions(record)
        kept = [(b, c) for b, c in zip(gt_boxes, gt_classes) if rng.rand() < 0.85]
        boxes = [list(np.array(b) + rng.normal(0, 1.5, 4)) for b, _ in kept]
        classes = [c for _, c in kept]
        scores = list(rng.uniform(0.3, 1.0, len(boxes)))
        for _ in range(2):  # false positives
            x0, y0 = rng.uniform(0, 80), rng.uniform(0, 60)
            boxes.append([x0, y0, x0 + rng.uniform(3, 30), y0 + rng.uniform(3, 20)])
            classes.append(rng.randint(3))
            scores.append(rng.uniform(0.0, 0.7))
        return boxes, np.round(scores, 2).tolist(), classes  # rounded: equal scores happen, as in practice

    return predict


@pytest.mark.parametrize("year", [2007, 2012])
def test_voc_evaluator_gives_detectron2s_numbers(tmp_path, write_voc, voc_object, year, unique_name,
                                                 evaluate_predictions, ground_truth_as_predictions):
    root = _random_voc(tmp_path, write_voc, voc_object)
    name = unique_name("voc_eval")
    register_voc_checked(name, root, "test", year, CLASSES)
    records = DatasetCatalog.get(name)
    # the same predictions for both: each gets its own generator of seed 1
    ours = evaluate_predictions(VOCEvaluator(name), records, _jittered_predictions(1, ground_truth_as_predictions))
    theirs = evaluate_predictions(PascalVOCDetectionEvaluator(name), records,
                                  _jittered_predictions(1, ground_truth_as_predictions))
    assert 20 < ours["AP"] < ours["AP50"] < 90  # a metric with room to differ
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])


def test_voc_evaluation_accepts_every_file_training_accepts(tmp_path, write_voc, voc_object, unique_name,
                                                            evaluate_predictions, ground_truth_as_predictions):
    # Float coordinates and no <pose>/<truncated>: detectron2's evaluator fails on them, ours reads what
    # training reads, and the training boxes given back as predictions score 100.
    root = write_voc(tmp_path, {
        "a": [voc_object("cat", (10.5, 20, 40.5, 45), pose=False, truncated=False)],
        "b": [voc_object("dog", (3, 4, 50, 40), pose=False)],
    }, split="test")
    name = unique_name("voc_float")
    register_voc_checked(name, root, "test", 2007, ("cat", "dog"))
    records = DatasetCatalog.get(name)
    result = evaluate_predictions(VOCEvaluator(name), records, ground_truth_as_predictions)
    assert (result["AP"], result["AP50"], result["AP75"]) == pytest.approx((100.0, 100.0, 100.0))
    with pytest.raises((ValueError, AttributeError)):
        evaluate_predictions(PascalVOCDetectionEvaluator(name), records, ground_truth_as_predictions)
