"""End to end on the CPU: train on a tiny generated dataset, evaluate, evaluate again with --eval-only, resume."""
import json
import math
import os

import pytest
import torch
import train_net

from detectron2.engine import HookBase

from mutual_guide.data import make_synthetic_dataset

pytestmark = pytest.mark.slow  # the module's runs share a training fixture: all of it is left to `make test`


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_synthetic_dataset(str(root), fmt="coco", num_train=16, num_test=8, image_size=128, seed=0, name="tshapes")


@pytest.fixture(scope="module")
def args_for(train_args):
    """train_args with the batch of 4 and the warm-up of 5 iterations these runs were measured with."""

    def build(info, output_dir, *opts, eval_only=False, resume=False):
        return train_args(info, output_dir, "SOLVER.IMS_PER_BATCH", 4, "SOLVER.WARMUP_ITERS", 5, *opts,
                          eval_only=eval_only, resume=resume)

    return build


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_detections(output_dir):
    path = os.path.join(output_dir, "inference", "tshapes_test", "coco_instances_results.json")
    with open(path) as f:
        dets = json.load(f)
    return sorted((d["image_id"], d["category_id"], round(d["score"], 4), *[round(v, 1) for v in d["bbox"]]) for d in dets)


class _LossRecorder(HookBase):
    """Keeps every iteration's total loss (metrics.json only has 20-iteration medians)."""

    def after_train(self):
        self.losses = [v for v, _ in self.trainer.storage.history("total_loss").values()]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory, args_for):
    """A 60-iteration run that evaluates at its end (the trainer's own evaluation, unfused model)."""
    out = tmp_path_factory.mktemp("train")
    # without augmentation, so that 60 iterations on 16 images visibly fit them
    args = args_for(shapes, out, "SOLVER.MAX_ITER", 60, "TEST.EVAL_PERIOD", 60, "SOLVER.CHECKPOINT_PERIOD", 30,
                    "INPUT.MG_AUGMENT", "False")
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    recorder = _LossRecorder()
    trainer.register_hooks([recorder])
    trainer.train()
    return out, trainer._last_eval_results, recorder.losses


def test_short_training_lowers_the_loss(trained):
    out, _, losses = trained
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"loss did not go down enough: first five {first:.3f}, last five {last:.3f}"
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert os.path.isfile(os.path.join(out, "model_0000029.pth"))


def test_training_ends_with_an_evaluation(trained):
    out, results, _ = trained
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert len(read_detections(out)) > 0


def test_eval_only_gives_the_same_metrics(trained, shapes, tmp_path, args_for):
    out, results, _ = trained
    before = read_detections(out)
    # Same weights, unfused: the same detections and metrics exactly.
    again = train_net.main(
        args_for(shapes, out, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                 "MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE", "False", eval_only=True)
    )
    assert read_detections(out) == before
    for key, value in results["bbox"].items():
        if math.isnan(value):  # an area range without objects
            assert math.isnan(again["bbox"][key]), key
        else:
            assert again["bbox"][key] == pytest.approx(value, abs=1e-9), key
    # BatchNorm folded into the convolutions (the default for --eval-only): same metrics within 0.1 AP.
    fused = train_net.main(
        args_for(shapes, out, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), eval_only=True)
    )
    for key, value in results["bbox"].items():
        if not math.isnan(value):
            assert fused["bbox"][key] == pytest.approx(value, abs=0.1), key


class _Killed(Exception):
    pass


class _Interrupt(HookBase):
    """Stops training after a given iteration, as a killed job would (the exception is not caught)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise _Killed(f"interrupted after iteration {self.at}")


def _final_weights(output_dir):
    return torch.load(os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


def test_resume_continues_an_interrupted_run(shapes, tmp_path, args_for):
    # The training set is one image and augmentation is off, so every batch is that image twice, in the
    # uninterrupted run and after resuming alike (a resumed run restarts its sampler, so with more images the
    # batches would come in another order, and the discrete assignment turns rounding into different labels).
    opts = ("SOLVER.MAX_ITER", 8, "SOLVER.CHECKPOINT_PERIOD", 3, "INPUT.MG_AUGMENT", "False", "TEST.EVAL_PERIOD", 0,
            "SOLVER.IMS_PER_BATCH", 2)
    info = make_synthetic_dataset(str(tmp_path / "one"), fmt="coco", num_train=1, num_test=2, image_size=128,
                                  seed=1)
    train_net.main(args_for(info, tmp_path / "straight", *opts))

    cfg = train_net.setup(args_for(info, tmp_path / "cut", *opts))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([_Interrupt(at=4)])
    with pytest.raises(_Killed):
        trainer.train()
    assert not os.path.exists(tmp_path / "cut" / "model_final.pth")
    with open(tmp_path / "cut" / "last_checkpoint") as f:
        assert f.read().strip() == "model_0000002.pth"

    resumed = train_net.Trainer(train_net.setup(args_for(info, tmp_path / "cut", *opts, resume=True)))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert resumed.scheduler.last_epoch == 3  # the learning-rate schedule continues, not restarts
    resumed.train()

    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, f"resumed run ends {worst:.2e} away from the uninterrupted one"
    lrs = {m["iteration"]: m["lr"] for m in read_metrics(tmp_path / "straight") if "lr" in m}
    lrs_resumed = {m["iteration"]: m["lr"] for m in read_metrics(tmp_path / "cut") if "lr" in m}
    for it in set(lrs) & set(lrs_resumed):
        assert lrs_resumed[it] == pytest.approx(lrs[it]), it


def test_bad_num_classes_is_refused(shapes, tmp_path, args_for):
    args = args_for(shapes, tmp_path, "MODEL.MUTUAL_GUIDE.NUM_CLASSES", 5, "SOLVER.MAX_ITER", 1)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        train_net.main(args)


def test_non_finite_loss_stops_with_the_iteration(shapes, tmp_path, monkeypatch, args_for):
    from mutual_guide.modeling.meta_arch.detector import MutualGuideDetector

    real_losses = MutualGuideDetector.losses
    calls = []

    def losses_going_nan(self, *args, **kwargs):
        out = real_losses(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > 3:  # iterations 0-2 are fine, iteration 3 diverges
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    monkeypatch.setattr(MutualGuideDetector, "losses", losses_going_nan)
    args = args_for(shapes, tmp_path, "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 2, "TEST.EVAL_PERIOD", 0)
    with pytest.raises(FloatingPointError, match="iteration=3"):
        train_net.main(args)
    # what was saved before the failure is kept
    assert os.path.isfile(tmp_path / "model_0000001.pth")
    assert not os.path.exists(tmp_path / "model_final.pth")
