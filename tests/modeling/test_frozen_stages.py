"""MODEL.BACKBONE.FREEZE_AT: the stem and the first stages of every backbone keep their weights and BN statistics."""
import pytest
import torch

from detectron2.modeling import build_backbone
from detectron2.solver import build_optimizer

from mutual_guide.modeling.fusion import fold_batchnorm

# (MODEL.BACKBONE.NAME, units: the stem and the stages); RepVGG-A2 takes over a second a step on the CPU
BACKBONES = [
    ("ShuffleNetV2", 4),
    ("ResNet18", 5),
    ("VGG16", 5),
    pytest.param("RepVGG", 5, marks=pytest.mark.slow),
]


def _backbone(make_cfg, name, freeze_at):
    cfg = make_cfg(backbone=name, size=64)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.SOLVER.BASE_LR = 0.1
    torch.manual_seed(0)
    return cfg, build_backbone(cfg)


def _unit_states(backbone):
    """Per unit (stem, stages), its parameters and BN buffers (running statistics, batches counted), cloned."""
    return [
        {f"{i}.{k}": v.detach().clone() for i, module in enumerate(unit) for k, v in module.state_dict().items()}
        for unit in backbone.stages()
    ]


@pytest.mark.parametrize("name, units", BACKBONES)
@pytest.mark.parametrize("freeze_at", [0, 1, 2])
def test_one_step_changes_only_the_stages_not_frozen(make_cfg, name, units, freeze_at):
    cfg, backbone = _backbone(make_cfg, name, freeze_at)
    assert len(backbone.stages()) == units
    optimizer = build_optimizer(cfg, backbone)
    before = _unit_states(backbone)

    backbone.train()
    out = backbone(torch.randn(2, 3, 64, 64))
    (out["s8"].square().mean() + out["s16"].square().mean()).backward()
    optimizer.step()

    for index, (old, new) in enumerate(zip(before, _unit_states(backbone))):
        changed = sorted(k for k in old if not torch.equal(old[k], new[k]))
        if index < freeze_at:
            assert changed == [], f"{name} FREEZE_AT {freeze_at}: frozen unit {index} changed {changed}"
        else:
            # every conv kernel and every running statistic (a BN scale's gradient can be too small to move 1.0 in
            # float32 in one step, so those are not required)
            expected = sorted(k for k in old if old[k].dim() == 4 or k.endswith(("running_mean", "running_var")))
            left = sorted(set(expected) - set(changed))
            assert expected and left == [], f"{name} FREEZE_AT {freeze_at}: unit {index} left {left}"


@pytest.mark.parametrize("name, units", BACKBONES)
def test_frozen_batchnorm_stays_in_eval_mode_and_out_of_the_optimizer(make_cfg, name, units):
    cfg, backbone = _backbone(make_cfg, name, 2)
    backbone.eval()
    backbone.train()  # what the trainer does after each evaluation
    norms = [[m for module in unit for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
             for unit in backbone.stages()]
    assert all(norms), f"{name}: a unit without BatchNorm would not test anything"
    assert [{m.training for m in unit} for unit in norms] == [{False}, {False}] + [{True}] * (units - 2)
    optimized = {id(p) for group in build_optimizer(cfg, backbone).param_groups for p in group["params"]}
    frozen = {id(p) for unit in backbone.stages()[:2] for module in unit for p in module.parameters()}
    assert frozen and not frozen & optimized
    assert len(optimized) == sum(1 for p in backbone.parameters()) - len(frozen)


def test_freeze_at_beyond_the_stages_names_the_range(make_cfg):
    cfg = make_cfg(backbone="ShuffleNetV2", size=64)
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    with pytest.raises(ValueError, match=r"FREEZE_AT must be 0 \(nothing frozen\) to 4 \(ShuffleNetV2Backbone: "
                                         r"the stem and 3 stages\), got 5"):
        build_backbone(cfg)


def test_batchnorm_of_frozen_stages_folds_into_the_same_outputs(make_cfg):
    cfg, backbone = _backbone(make_cfg, "ResNet18", 2)
    optimizer = build_optimizer(cfg, backbone)
    backbone.train()
    out = backbone(torch.randn(2, 3, 64, 64))
    (out["s8"].mean() + out["s16"].mean()).backward()
    optimizer.step()

    backbone.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(image)
        fold_batchnorm(backbone)
        folded = backbone(image)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())  # frozen ones folded too
    for key in ("s8", "s16"):
        torch.testing.assert_close(folded[key], expected[key], rtol=1e-4, atol=1e-4)


def test_the_paper_configs_train_every_layer():
    import glob
    import os

    from conftest import ROOT
    from detectron2.config import get_cfg

    from mutual_guide import add_mutual_guide_config

    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "mg_*.yaml"))):
        cfg = get_cfg()
        add_mutual_guide_config(cfg)
        cfg.merge_from_file(path)
        assert cfg.MODEL.BACKBONE.FREEZE_AT == 0, path
