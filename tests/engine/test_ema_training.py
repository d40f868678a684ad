"""MODEL_EMA in training runs: an exact --resume, evaluation and model_best.pth of the average, RetinaNet."""
import json
import os

import pytest
import torch
import train_net
from conftest import ROOT

from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase

from mutual_guide.data import make_synthetic_dataset

SMALL = ("MODEL.BACKBONE.NAME", "ShuffleNetV2", "SOLVER.CHECKPOINT_PERIOD", 2, "MODEL_EMA.ENABLED", True)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    """One training image: every batch is that image twice, so a resumed run sees exactly the batches it would have
    seen (detectron2's sampler restarts its order on --resume)."""
    root = tmp_path_factory.mktemp("emashapes")
    info = make_synthetic_dataset(str(root), fmt="coco", num_train=1, num_test=2, image_size=128, seed=3,
                                  name="emashapes")
    yield info
    for split in ("train", "test"):
        DatasetCatalog.remove(f"emashapes_{split}") if f"emashapes_{split}" in DatasetCatalog.list() else None


class StopAfter(HookBase):
    """Interrupts the run after iteration `last` (0-based), once every hook has run (the checkpoint is saved)."""

    def __init__(self, last):
        self.last, self.stop_training = last, False

    def after_step(self):
        self.stop_training = self.trainer.iter == self.last


def run(args, stop_after=None):
    trainer = train_net.Trainer(train_net.setup(args))
    if stop_after is not None:
        trainer.register_hooks([StopAfter(stop_after)])
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return trainer


@pytest.mark.slow
def test_resume_continues_the_same_average_bit_for_bit(one_image, train_args, tmp_path):
    # a ramp of 3 iterations: the decay changes at every step, so a restarted count would show
    opts = (*SMALL, "SOLVER.MAX_ITER", 4, "MODEL_EMA.RAMP_ITERS", 3, "DATASETS.TEST", "()")
    straight = run(train_args(one_image, tmp_path / "straight", *opts))
    run(train_args(one_image, tmp_path / "resumed", *opts), stop_after=1)
    assert (tmp_path / "resumed" / "model_0000001.pth").is_file()
    assert not (tmp_path / "resumed" / "model_final.pth").exists()
    resumed = run(train_args(one_image, tmp_path / "resumed", *opts, resume=True))
    assert resumed.start_iter == 2 and resumed.ema.updates == straight.ema.updates == 4
    assert states_equal(resumed.ema.model.state_dict(), straight.ema.model.state_dict())
    assert states_equal(resumed.model.state_dict(), straight.model.state_dict())
    final = [torch.load(tmp_path / d / "model_final.pth", map_location="cpu", weights_only=False)
             for d in ("straight", "resumed")]
    assert states_equal(final[0]["model"], final[1]["model"])
    assert states_equal(final[0]["model"], straight.ema.model.state_dict())
    assert not states_equal(final[0]["model"], straight.model.state_dict())


class RecordingTrainer(train_net.Trainer):
    """Records what each evaluation was given, and scripts AP50 so that the first evaluation is the best."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.evaluated = []  # (model evaluated, its weights, the training weights then)

    def test(self, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        self.evaluated.append((model, clone(model.state_dict()), clone(self._unwrapped_model.state_dict())))
        results["bbox"]["AP50"] = [60.0, 20.0][len(self.evaluated) - 1]
        return results


@pytest.mark.slow
def test_evaluation_and_model_best_are_the_average(one_image, train_args, tmp_path):
    # decay 0.5 without ramp: the average is far from the training weights after a step
    args = train_args(one_image, tmp_path, *SMALL, "SOLVER.MAX_ITER", 4, "TEST.EVAL_PERIOD", 2,
                      "SOLVER.CHECKPOINT_PERIOD", 100, "MODEL_EMA.DECAY", 0.5, "MODEL_EMA.RAMP_ITERS", 0)
    trainer = RecordingTrainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert len(trainer.evaluated) == 2
    for model, weights, training in trainer.evaluated:
        assert model is trainer.ema.model
        assert not states_equal(weights, training)
    best = torch.load(tmp_path / "model_best.pth", map_location="cpu", weights_only=False)
    assert best["iteration"] == 1
    assert states_equal(best["model"], trainer.evaluated[0][1])  # the average evaluated first, the best
    assert states_equal(best["ema"]["training_weights"], trainer.evaluated[0][2])


@pytest.mark.slow
def test_retinanet_trains_with_the_average(tmp_path):
    info = make_synthetic_dataset(str(tmp_path / "shapes"), fmt="coco", num_train=2, num_test=0, image_size=128,
                                  seed=1, name="rn_ema")
    sizes = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in (8, 16, 32, 64, 128)]
    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATASETS.CUSTOM", json.dumps(info["custom_specs"]),
        "DATASETS.TRAIN", "('rn_ema_train',)", "DATASETS.TEST", "()",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.NORM", "GN",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1",
        "MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.MUTUAL_GUIDE.NUM_CLASSES", "3", "MODEL.ANCHOR_GENERATOR.SIZES",
        str(sizes), "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)", "DATALOADER.NUM_WORKERS", "0",
        "MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.5", "MODEL_EMA.RAMP_ITERS", "0",
        "OUTPUT_DIR", str(tmp_path / "run"),
    ]
    config = os.path.join(ROOT, "configs", "retinanet_R50_FPN_mg_coco.yaml")
    trainer = run(train_net.argument_parser().parse_args(["--config-file", config, *opts]))
    assert trainer.ema.updates == 2
    final = torch.load(tmp_path / "run" / "model_final.pth", map_location="cpu", weights_only=False)
    assert states_equal(final["model"], trainer.ema.model.state_dict())
    assert states_equal(final["ema"]["training_weights"], trainer.model.state_dict())
    assert not states_equal(final["model"], final["ema"]["training_weights"])
    DatasetCatalog.remove("rn_ema_train")
