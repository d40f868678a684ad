"""The average of the weights (MODEL_EMA.*): its arithmetic, and what the checkpoint files hold and give back."""
import math

import pytest
import torch

from detectron2.modeling import build_model

from mutual_guide.checkpoint import MutualGuideCheckpointer
from mutual_guide.engine.ema import EMAHook, ModelEMA


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        self.norm = torch.nn.BatchNorm1d(1)


def set_weights(module, w, b, mean, tracked):
    with torch.no_grad():
        module.linear.weight.copy_(torch.tensor([w]))
        module.linear.bias.fill_(b)
        module.norm.running_mean.fill_(mean)
        module.norm.num_batches_tracked.fill_(tracked)


def test_the_average_follows_the_authors_ramp_by_hand():
    model = Tiny()
    set_weights(model, [1.0, -2.0], 0.5, 4.0, 0)
    ema = ModelEMA(model)  # the authors' 0.9998 and 2000
    EMAHook(ema, model).before_train()  # starts from the weights training starts with
    # three steps: the weights move to these values in turn
    steps = [([3.0, 0.0], 1.5, 2.0, 1), ([-1.0, 2.0], -0.5, 0.0, 2), ([0.0, 4.0], 2.5, 8.0, 3)]
    expected_w, expected_b, expected_mean = [1.0, -2.0], 0.5, 4.0
    for u, (w, b, mean, tracked) in enumerate(steps, start=1):
        set_weights(model, w, b, mean, tracked)
        ema.update(model)
        d = 0.9998 * (1 - math.exp(-u / 2000))  # 0.000499..., 0.000998..., 0.001496...
        expected_w = [d * e + (1 - d) * x for e, x in zip(expected_w, w)]
        expected_b = d * expected_b + (1 - d) * b
        expected_mean = d * expected_mean + (1 - d) * mean
    averaged = ema.model.state_dict()
    assert ema.updates == 3
    assert torch.allclose(averaged["linear.weight"].double(), torch.tensor([expected_w], dtype=torch.float64),
                          rtol=0, atol=1e-6)
    assert averaged["linear.bias"].item() == pytest.approx(expected_b, abs=1e-6)
    assert averaged["norm.running_mean"].item() == pytest.approx(expected_mean, abs=1e-6)  # buffers averaged too
    assert averaged["norm.num_batches_tracked"].item() == 3  # integers follow the weights
    # two updates at 0.5 without ramp: 0.25 w0 + 0.25 w1 + 0.5 w2
    ema = ModelEMA(model, decay=0.5, ramp_iters=0)
    for value in (2.0, 6.0):
        set_weights(model, [value, value], value, value, 0)
        ema.update(model)
    assert ema.model.linear.bias.item() == pytest.approx(0.25 * 2.5 + 0.25 * 2.0 + 0.5 * 6.0)


def test_a_decay_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"MODEL_EMA.DECAY must be in \[0, 1\), got 1.0"):
        ModelEMA(Tiny(), decay=1.0)


@pytest.fixture
def trained(make_cfg, randomize_batchnorm):
    """A detector whose training weights and average differ, and the file the trainer's checkpointer saves."""

    def build(folder):
        folder.mkdir(parents=True, exist_ok=True)
        cfg = make_cfg(size=64, num_classes=3)
        model = randomize_batchnorm(build_model(cfg), seed=0)
        ema = ModelEMA(model, decay=0.5, ramp_iters=0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.mul_(1.5)
        ema.update(model)  # the average is halfway: differs from both
        checkpointer = MutualGuideCheckpointer(model, str(folder), restores_training=True, ema=ema)
        checkpointer.save("model_final", iteration=7)
        return cfg, model, ema, str(folder / "model_final.pth")

    return build


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_files_model_is_the_average_and_the_training_weights_are_kept(trained, tmp_path):
    cfg, model, ema, path = trained(tmp_path)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert states_equal(saved["model"], ema.model.state_dict())
    assert states_equal(saved["ema"]["training_weights"], model.state_dict())
    assert saved["ema"]["updates"] == 1
    assert not states_equal(saved["model"], saved["ema"]["training_weights"])


def test_inference_loading_gives_the_average_and_folds_its_batchnorm(trained, tmp_path, load_tool):
    """--eval-only, demo.py (MutualGuideCheckpointer(model).load) and tools/export_model.py all read the average."""
    cfg, model, ema, path = trained(tmp_path)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = ema.model.predict(ema.model.preprocess_image([{"image": image}]).tensor)

    fresh = build_model(cfg)
    MutualGuideCheckpointer(fresh).resume_or_load(path, resume=False)  # train_net.py --eval-only
    assert states_equal(fresh.state_dict(), ema.model.state_dict())
    fresh.eval().fuse_for_inference()
    with torch.no_grad():
        got = fresh.predict(fresh.preprocess_image([{"image": image}]).tensor)
    for a, b in zip(got, expected):  # logits and deltas of the folded average = the average's
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)

    cfg.MODEL.WEIGHTS = path
    exported = load_tool("export_model").load_model(cfg, allow_random_weights=False)
    assert states_equal(exported.state_dict(), ema.model.state_dict())


def test_resume_puts_the_training_weights_back_and_the_average_in_the_ema(trained, tmp_path, make_cfg):
    cfg, model, ema, path = trained(tmp_path)
    fresh = build_model(cfg)
    fresh_ema = ModelEMA(fresh)
    checkpointer = MutualGuideCheckpointer(fresh, str(tmp_path), restores_training=True, ema=fresh_ema)
    rest = checkpointer.resume_or_load("", resume=True)
    assert rest["iteration"] == 7
    assert states_equal(fresh.state_dict(), model.state_dict())
    assert states_equal(fresh_ema.model.state_dict(), ema.model.state_dict())
    assert fresh_ema.updates == 1 and fresh_ema.restored


def test_resume_without_ema_state_or_without_ema_says_what_happens(trained, tmp_path, logged):
    cfg, model, ema, path = trained(tmp_path / "with")
    messages = logged("mutual_guide.checkpoint")
    # EMA now off: training goes on from the training weights, the average is dropped
    fresh = build_model(cfg)
    MutualGuideCheckpointer(fresh, str(tmp_path / "with"), restores_training=True).resume_or_load("", resume=True)
    assert states_equal(fresh.state_dict(), model.state_dict())
    assert any("MODEL_EMA.ENABLED False: training goes on from its training weights" in m for m in messages)
    # a checkpoint saved without EMA, resumed with it: the average restarts from the weights (EMAHook)
    (tmp_path / "without").mkdir()
    MutualGuideCheckpointer(model, str(tmp_path / "without")).save("model_0000004", iteration=4)
    fresh_ema = ModelEMA(fresh)
    MutualGuideCheckpointer(fresh, str(tmp_path / "without"), restores_training=True,
                            ema=fresh_ema).resume_or_load("", resume=True)
    assert any("holds no EMA of the weights" in m and "starts afresh from the weights loaded" in m for m in messages)
    assert not fresh_ema.restored
    EMAHook(fresh_ema, fresh).before_train()
    assert states_equal(fresh_ema.model.state_dict(), model.state_dict()) and fresh_ema.updates == 0


def test_averages_that_do_not_fit_the_network_are_refused(trained, tmp_path, make_cfg):
    cfg, model, ema, path = trained(tmp_path)
    other = build_model(make_cfg(size=64, num_classes=5))
    with pytest.raises(ValueError, match=r"EMA weights of the checkpoint do not fit the network:\n  head"):
        ModelEMA(other).load_state_dict({"averages": ema.model.state_dict(), "updates": 1})


def test_a_bad_decay_stops_the_run_before_anything_is_built(make_cfg):
    from mutual_guide.engine.preflight import check_config

    cfg = make_cfg(opts=["MODEL_EMA.DECAY", 1.0])
    check_config(cfg)  # read only with MODEL_EMA.ENABLED
    cfg.MODEL_EMA.ENABLED = True
    with pytest.raises(ValueError, match=r"MODEL_EMA.DECAY must be in \[0, 1\), got 1.0"):
        check_config(cfg)
