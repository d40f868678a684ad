"""TEST.EARLY_STOP_PATIENCE: training stops when TEST.BEST_METRIC has not improved for that many evaluations."""
import os
import types
import uuid

import pytest
import torch
import train_net

import detectron2.utils.comm as comm
from detectron2.engine import launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils.events import EventStorage

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.engine.hooks import EarlyStopping

# The runs below: 12 iterations, an evaluation every 2 (after iterations 2, 4, 6, 8 and 10; detectron2's trainer.iter
# 1, 3, 5, 7, 9), a checkpoint every 3 (after iterations 3, 6, 9, 12), patience 2. AP50 by trainer.iter: the best is
# 30 at 3; 20 at 5 and 25 at 7 are two evaluations without improvement, so the run stops after iteration 8.
# The 40 at 9 would be the best if the run went on: a run that does not stop there keeps another model_best.pth.
SCRIPTED_AP50 = {1: 10.0, 3: 30.0, 5: 20.0, 7: 25.0, 9: 40.0, 11: 5.0}
STOP_ITER = 7
# The interrupted run dies in iteration 6, after the checkpoint of iteration 5, which is also an evaluation's
# iteration: that checkpoint must hold the count after the evaluation (one), not before (none).
KILL_ITER = 6


class ScriptedTrainer(train_net.Trainer):
    """Evaluations give SCRIPTED_AP50 at the trainer's iteration (no inference); keeps the weights evaluated."""

    def __init__(self, cfg, kill_at=None):
        super().__init__(cfg)
        self.kill_at = kill_at
        self.evaluated = {}  # trainer.iter -> weights

    def test(self, cfg, model, evaluators=None):  # an instance's method, to know the iteration evaluated
        self.evaluated[self.iter] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if not comm.is_main_process():
            return {}  # as detectron2's evaluators: the results are the main process's
        ap50 = SCRIPTED_AP50[self.iter]
        return {"bbox": {"AP": ap50 / 2, "AP50": ap50}}

    def run_step(self):
        if self.iter == self.kill_at:
            raise RuntimeError("killed")
        super().run_step()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("stopshapes")), fmt="coco", num_train=4, num_test=2,
                                  image_size=64, seed=3, name=f"stop{uuid.uuid4().hex[:8]}")


def _args(train_args, shapes, out, *opts, resume=False):
    return train_args(shapes, out, "INPUT.SIZE", 64, "MODEL.BACKBONE.NAME", "ShuffleNetV2", "SOLVER.MAX_ITER", 12,
                      "TEST.EVAL_PERIOD", 2, "SOLVER.CHECKPOINT_PERIOD", 3, "TEST.EARLY_STOP_PATIENCE", 2, *opts,
                      resume=resume)


def _checkpoint(out, name):
    return torch.load(os.path.join(out, name), map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_the_run_stops_where_patience_runs_out(shapes, train_args, tmp_path, logged):
    messages = logged("mutual_guide.engine.hooks")
    trainer = ScriptedTrainer(train_net.setup(_args(train_args, shapes, tmp_path)))
    trainer.resume_or_load(resume=False)
    trainer.train()

    assert trainer.iter == STOP_ITER
    assert sorted(trainer.evaluated) == [1, 3, 5, 7]  # no evaluation after the stop, nor a second one at it
    assert [m for m in messages if m.startswith("Early stopping")] == [
        "Early stopping after iteration 8 of 12: bbox/AP50 has not improved for 2 evaluations in a row "
        "(TEST.EARLY_STOP_PATIENCE 2); its best, 30.0000, was at the evaluation after iteration 4."
    ]
    final = _checkpoint(tmp_path, "model_final.pth")
    assert final["iteration"] == STOP_ITER
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert final["early_stopping"] == {"best": 30.0, "best_iter": 3, "evaluations_without_improvement": 2}
    for key, value in final["model"].items():
        assert torch.equal(value, trainer.evaluated[STOP_ITER][key]), key  # the weights of the last evaluation
    assert not (tmp_path / "model_0000008.pth").exists()  # iteration 9 was never trained

    best = _checkpoint(tmp_path, "model_best.pth")
    assert best["iteration"] == 3
    for key, value in best["model"].items():
        assert torch.equal(value, trainer.evaluated[3][key]), key


@pytest.mark.slow
def test_a_resumed_run_counts_on_and_stops_at_the_same_iteration(shapes, train_args, tmp_path):
    interrupted = ScriptedTrainer(train_net.setup(_args(train_args, shapes, tmp_path)), kill_at=KILL_ITER)
    interrupted.resume_or_load(resume=False)
    with pytest.raises(RuntimeError, match="killed"):
        interrupted.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"
    saved = _checkpoint(tmp_path, "model_0000005.pth")
    assert saved["early_stopping"] == {"best": 30.0, "best_iter": 3, "evaluations_without_improvement": 1}

    resumed = ScriptedTrainer(train_net.setup(_args(train_args, shapes, tmp_path, resume=True)))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == KILL_ITER
    resumed.train()

    assert resumed.iter == STOP_ITER
    assert sorted(resumed.evaluated) == [7]
    assert _checkpoint(tmp_path, "model_final.pth")["iteration"] == STOP_ITER
    # the evaluation after the resume (25) is worse than the best before it (30): model_best.pth is kept
    best = _checkpoint(tmp_path, "model_best.pth")
    assert best["iteration"] == 3
    for key, value in best["model"].items():
        assert torch.equal(value, interrupted.evaluated[3][key]), key


def _train_in_process(args, output_dir):
    """Runs in every process: the scripted run; writes the iteration this process stopped at."""
    torch.set_num_threads(1)
    trainer = ScriptedTrainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(output_dir, f"stopped_rank{comm.get_rank()}"), "w") as f:
        f.write(f"{trainer.iter} {sorted(trainer.evaluated)}")
    if torch.distributed.is_initialized():  # gloo's threads end before the process does (an abort otherwise)
        comm.synchronize()
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_every_process_stops_at_the_main_process_decision(shapes, train_args, tmp_path):
    # only the main process has the metric: without its decision shared, the other trains on alone, and its next
    # all-reduce fails once the main process has left
    launch(_train_in_process, 2, num_machines=1, machine_rank=0, dist_url=f"tcp://127.0.0.1:{_find_free_port()}",
           # 2 images a process: BatchNorm needs more than one value per channel on the 1 x 1 map of a 64 x 64 image
           args=(_args(train_args, shapes, tmp_path, "SOLVER.IMS_PER_BATCH", 4), str(tmp_path)))
    expected = f"{STOP_ITER} [1, 3, 5, 7]"
    assert [(tmp_path / f"stopped_rank{rank}").read_text() for rank in (0, 1)] == [expected, expected]
    assert _checkpoint(tmp_path, "model_final.pth")["iteration"] == STOP_ITER


def _evaluate(hook, iteration, **metrics):
    """One evaluation stored at `iteration` (detectron2's trainer.iter), then the hook's after_step."""
    storage = EventStorage(start_iter=iteration)
    storage.put_scalars(total_loss=1.0, **metrics, smoothing_hint=False)
    hook.trainer = types.SimpleNamespace(storage=storage, iter=iteration, max_iter=100)
    hook.after_step()
    return hook.stop_training


def test_patience_counts_evaluations_without_improvement_in_a_row():
    hook = EarlyStopping(10, checkpointer=None, metric="bbox/AP50", patience=2)
    # 50 is not an improvement on 50: only a higher value resets the count
    decisions = [_evaluate(hook, it, **{"bbox/AP50": v}) for it, v in ((9, 40.0), (19, 50.0), (29, 45.0),
                                                                       (39, 60.0), (49, 50.0))]
    assert decisions == [False] * 5
    assert (hook.best, hook.best_iter, hook.evaluations_without_improvement) == (60.0, 39, 1)
    assert _evaluate(hook, 59, **{"bbox/AP50": 60.0}) is True


def test_an_evaluation_without_the_metric_is_not_counted(logged):
    messages = logged("mutual_guide.engine.hooks")
    hook = EarlyStopping(10, checkpointer=None, metric="bbox/AP50", patience=1)
    _evaluate(hook, 9, **{"bbox/AP50": 40.0})
    assert _evaluate(hook, 19, **{"bbox/AP": 10.0}) is False
    assert hook.evaluations_without_improvement == 0
    assert any("'bbox/AP50' is not among the results of the evaluation after iteration 20" in m for m in messages)


def test_only_the_iterations_of_evaluations_are_counted():
    hook = EarlyStopping(10, checkpointer=None, metric="bbox/AP50", patience=1)
    _evaluate(hook, 9, **{"bbox/AP50": 40.0})
    # iteration 14 is no evaluation's (an old value still in the storage must not count again), nor is the last
    # one (max_iter 100: the final evaluation, after training)
    assert _evaluate(hook, 14, **{"bbox/AP50": 30.0}) is False
    assert _evaluate(hook, 99, **{"bbox/AP50": 30.0}) is False
    assert hook.evaluations_without_improvement == 0


def test_patience_without_evaluation_during_training_is_refused(shapes, train_args, tmp_path):
    args = train_args(shapes, tmp_path, "TEST.EVAL_PERIOD", 0, "TEST.EARLY_STOP_PATIENCE", 3)
    with pytest.raises(ValueError, match=r"TEST.EARLY_STOP_PATIENCE 3 counts evaluations during training: it needs "
                                         r"TEST.EVAL_PERIOD > 0 and DATASETS.TEST"):
        train_net.setup(args)


def test_the_count_comes_back_from_the_state_saved():
    hook = EarlyStopping(10, checkpointer=None, metric="bbox/AP50", patience=2)
    _evaluate(hook, 9, **{"bbox/AP50": 40.0})
    _evaluate(hook, 19, **{"bbox/AP50": 30.0})
    restored = EarlyStopping(10, checkpointer=None, metric="bbox/AP50", patience=2)
    restored.progress.load_state_dict(hook.progress.state_dict())
    assert _evaluate(restored, 29, **{"bbox/AP50": 39.0}) is True
