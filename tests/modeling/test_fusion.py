"""Inference rewrites keep the outputs: BatchNorm folding and RepVGG re-parameterisation."""
import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

import mutual_guide.modeling.backbone  # noqa: F401  (registers the backbones)
import mutual_guide.modeling.meta_arch.detector  # noqa: F401
from mutual_guide.modeling.backbone.repvgg import RepVGGBackbone, RepVGGBlock
from mutual_guide.modeling.fusion import fold_batchnorm, fuse_repvgg_blocks


@pytest.fixture
def make_model(make_cfg):
    def build(backbone, neck="PAFPN", size=320):
        return build_model(make_cfg(backbone, neck, size))

    return build


def count_bn(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.slow
def test_fold_batchnorm_keeps_detector_outputs(make_model, randomize_batchnorm):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for backbone, neck in [("ResNet18", "PAFPN"), ("ShuffleNetV2", "RFB")]:
        model = randomize_batchnorm(make_model(backbone, neck)).eval()
        with torch.no_grad():
            before = model.predict(x)
            assert count_bn(model) > 20
            fold_batchnorm(model)
            assert count_bn(model) == 0  # every BN of these networks follows a conv
            after = model.predict(x)
        for b, a in zip(before, after):
            assert relative_error(a, b) < 1e-4, (backbone, neck)


def test_fold_batchnorm_leaves_training_batchnorm_alone(make_model):
    model = make_model("ShuffleNetV2", "SSD")
    model.train()
    n = count_bn(model)
    fold_batchnorm(model)
    assert count_bn(model) == n


@pytest.mark.slow
def test_fuse_repvgg_blocks_keeps_outputs_and_matches_deploy_build(randomize_batchnorm):
    torch.manual_seed(0)
    backbone = randomize_batchnorm(RepVGGBackbone()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = backbone(x)
        fuse_repvgg_blocks(backbone)
        after = backbone(x)
    assert all(b.deploy for b in backbone.modules() if isinstance(b, RepVGGBlock))
    assert count_bn(backbone) == 0
    for name in ("s8", "s16"):
        assert relative_error(after[name], before[name]) < 1e-4

    # the fused weights are exactly the state dict of a backbone built in deploy form (REPVGG_DEPLOY True)
    deploy = RepVGGBackbone(deploy=True).eval()
    assert deploy.state_dict().keys() == backbone.state_dict().keys()
    deploy.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        assert torch.equal(deploy(x)["s16"], after["s16"])


def test_repvgg_block_identity_branch_fuses(randomize_batchnorm):
    block = randomize_batchnorm(RepVGGBlock(16, 16, stride=1)).eval()
    assert block.rbr_identity is not None
    x = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        before = block(x)
        block.switch_to_deploy()
        after = block(x)
    assert relative_error(after, before) < 1e-5
    assert set(dict(block.named_parameters())) == {"rbr_reparam.weight", "rbr_reparam.bias"}


@pytest.mark.slow
def test_fuse_for_inference_on_repvgg_detector(make_model, randomize_batchnorm):
    torch.manual_seed(0)
    model = randomize_batchnorm(make_model("RepVGG", "FPN")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model.predict(x)
        model.fuse_for_inference()
        after = model.predict(x)
    assert count_bn(model) == 0
    for b, a in zip(before, after):
        assert relative_error(a, b) < 1e-4
