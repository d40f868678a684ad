"""Evaluation during training (TEST.EVAL_PERIOD) and OUTPUT_DIR/model_best.pth on TEST.BEST_METRIC."""
import glob
import json
import os
import types

import pytest
import torch
import train_net
from conftest import ROOT

from detectron2.utils.events import EventStorage

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.engine.hooks import BestModelCheckpointer

# AP50 given to the three evaluations of the run below (after iterations 2, 4 and the last, 6): the best is the
# middle one, so that neither "the first saved" nor "the last saved" passes for "the best saved".
SCRIPTED_AP50 = [20.0, 60.0, 40.0]


class ScriptedTrainer(train_net.Trainer):
    """The real evaluation (its metric names are checked), then AP50 from SCRIPTED_AP50; keeps the weights."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.evaluated = []  # (real results, weights) of every evaluation of this trainer

    def test(self, cfg, model, evaluators=None):  # DefaultTrainer's hooks call it on the trainer
        results = super().test(cfg, model, evaluators)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.evaluated.append((json.loads(json.dumps(results)), weights))
        results["bbox"]["AP50"] = SCRIPTED_AP50[len(self.evaluated) - 1]
        return results


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bestshapes")
    info = make_synthetic_dataset(str(root), fmt="coco", num_train=8, num_test=4, image_size=128, seed=2,
                                  name="bestshapes")
    return info, tmp_path_factory.mktemp("best")


@pytest.mark.slow
def test_model_best_holds_the_weights_of_the_best_evaluation(run, train_args):
    info, out = run
    args = train_args(info, out, "SOLVER.MAX_ITER", 6, "TEST.EVAL_PERIOD", 2, "SOLVER.CHECKPOINT_PERIOD", 100)
    trainer = ScriptedTrainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    trainer.train()

    assert len(trainer.evaluated) == 3
    assert "AP50" in trainer.evaluated[0][0]["bbox"]  # TEST.BEST_METRIC's default is a real metric
    best = torch.load(os.path.join(out, "model_best.pth"), map_location="cpu", weights_only=False)
    assert best["iteration"] == 3  # the evaluation after iteration 4 (detectron2 counts from 0)
    middle, last = trainer.evaluated[1][1], trainer.evaluated[2][1]
    for key, value in best["model"].items():
        assert torch.equal(value, middle[key]), key
    assert any(not torch.equal(best["model"][k], last[k]) for k in last)  # training went on after the best
    # detectron2 stores the final evaluation at max_iter, the others at the iteration just done
    assert trainer.storage.history("bbox/AP50").values() == list(zip(SCRIPTED_AP50, [1, 3, 6]))


class _Saved:
    def __init__(self):
        self.names = []

    def save(self, name, **kwargs):
        self.names.append(name)


def _after_evaluation(hook, **metrics):
    storage = EventStorage(start_iter=9)
    storage.put_scalars(total_loss=1.0, lr=0.01, **metrics, smoothing_hint=False)
    hook.trainer = types.SimpleNamespace(storage=storage, iter=9, max_iter=100)
    hook.after_step()


def test_an_unknown_metric_is_logged_with_the_ones_that_exist(logged):
    messages = logged("mutual_guide.engine.hooks")
    saved = _Saved()
    hook = BestModelCheckpointer(10, saved, "bbox/AP_50")
    _after_evaluation(hook, **{"bbox/AP": 30.0, "bbox/AP50": 50.0, "bbox/AP75": 25.0})
    assert saved.names == []
    assert any("'bbox/AP_50'" in m and "bbox/AP, bbox/AP50, bbox/AP75" in m for m in messages), messages

    hook = BestModelCheckpointer(10, saved, "bbox/AP50")
    _after_evaluation(hook, **{"bbox/AP": 30.0, "bbox/AP50": 50.0})
    assert saved.names == ["model_best"]


def test_every_config_evaluates_a_few_times_per_schedule(make_cfg):
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "mg_*.yaml"))):
        cfg = make_cfg(config_file=path)
        evaluations = cfg.SOLVER.MAX_ITER // cfg.TEST.EVAL_PERIOD if cfg.TEST.EVAL_PERIOD > 0 else 0
        assert 3 <= evaluations <= 10, f"{path}: {evaluations} evaluations in {cfg.SOLVER.MAX_ITER} iterations"
        # a metric the evaluators report (a misspelt one is only logged, and model_best.pth never written)
        assert cfg.TEST.BEST_METRIC in {"bbox/AP", "bbox/AP50", "bbox/AP75"}, path
