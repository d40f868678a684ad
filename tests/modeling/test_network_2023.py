"""The 2023 network (MODEL.MUTUAL_GUIDE.NETWORK "mg2023", the authors' code at 108b4a8): sizes, layout, fusion, keys."""
import pytest
import torch

from detectron2.modeling import build_model

from mutual_guide.checkpoint import convert_paper_state_dict, to_paper_state_dict
from mutual_guide.modeling.anchors import anchors_per_level, generate_anchors, num_levels_for
from mutual_guide.modeling.backbone.repvgg import RepVGG2023Backbone, RepVGGBlock

# Parameters of the authors' Detector(640, 80, <backbone>, "pafpn", "normal") at 108b4a8 without its distillation
# branch `dist` (and, for RepVGG-A0, without the training branches left beside stage0 / stage1's fused convs),
# measured on their code by
#   python parity/check_authors_2023_model.py --authors-repo <checkout of 108b4a8>
# ("theirs ... M used", 2026-12-05).
AUTHORS_PARAMETERS = {
    "mg23_cspdarknet075_pafpn_coco.yaml": 24_451_016,
    "mg23_cspdarknet05_pafpn_coco.yaml": 16_146_856,
    "mg23_resnet18_pafpn_coco.yaml": 23_110_696,
    "mg23_repvggA0_pafpn_coco.yaml": 20_133_704,
    "mg23_shufflenet15_pafpn_coco.yaml": 2_558_600,
    "mg23_shufflenet10_pafpn_coco.yaml": 1_502_540,
}


def _small(make_cfg, config, size=128, opts=()):
    cfg = make_cfg(config_file=config, size=size, opts=["MODEL.BACKBONE.PRETRAINED", "", *opts])
    cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = []
    return cfg


@pytest.mark.parametrize("config", sorted(AUTHORS_PARAMETERS))
def test_parameters_equal_the_authors_code(make_cfg, config):
    model = build_model(_small(make_cfg, config, size=640))
    assert sum(p.numel() for p in model.parameters()) == AUTHORS_PARAMETERS[config]


def test_anchor_layout_starts_at_stride_16_with_three_levels_up_to_640():
    assert [num_levels_for(s, "mg2023") for s in (320, 640, 704)] == [3, 3, 4]
    assert anchors_per_level(640, 3, "mg2023") == [6 * 40 * 40, 6 * 20 * 20, 6 * 10 * 10]
    anchors = generate_anchors(640, 48.0, 3, "mg2023")
    # level 0, first cell: centre (8, 8) px (stride 16), side 48; level 1's first: centre (16, 16), side 96
    assert torch.allclose(anchors[0], torch.tensor([-16.0, -16.0, 32.0, 32.0]))
    assert torch.allclose(anchors[9600], torch.tensor([-32.0, -32.0, 64.0, 64.0]))
    # the second shape is sqrt(2) wide and 1/sqrt(2) high: 48 * 1.41421 = 67.88 x 33.94 px around (8, 8)
    assert torch.allclose(anchors[1], torch.tensor([8 - 33.9411, 8 - 16.9706, 8 + 33.9411, 8 + 16.9706]), atol=1e-3)


def test_a_2020_neck_in_the_2023_network_is_refused(make_cfg):
    cfg = _small(make_cfg, "mg23_shufflenet10_pafpn_coco.yaml", opts=["MODEL.NECK.NAME", "PAFPN"])
    with pytest.raises(ValueError, match="not a neck of MODEL.MUTUAL_GUIDE.NETWORK 'mg2023'"):
        build_model(cfg)


@pytest.mark.parametrize(
    "config",
    ["mg23_cspdarknet05_pafpn_coco.yaml", "mg23_repvggA0_pafpn_coco.yaml", "mg23_shufflenet10_pafpn_coco.yaml"],
)
def test_outputs_and_fusion(make_cfg, randomize_batchnorm, config):
    model = randomize_batchnorm(build_model(_small(make_cfg, config, opts=["MODEL.MUTUAL_GUIDE.NUM_CLASSES", 3])))
    model.eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        logits, deltas = model.predict(x)
        # 128 px: maps of 8, 4 and 2 cells, six anchors each
        assert logits.shape == (2, 6 * (64 + 16 + 4), 3) and deltas.shape == (2, 504, 4)
        assert len(model.anchors) == 504
        model.fuse_for_inference()
        fused_logits, fused_deltas = model.predict(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, RepVGGBlock) and not m.deploy for m in model.modules())
    torch.testing.assert_close(fused_logits, logits, atol=1e-4 * float(logits.abs().max()), rtol=0)
    torch.testing.assert_close(fused_deltas, deltas, atol=1e-4 * float(deltas.abs().max()), rtol=0)


def test_authors_state_dict_round_trips_without_dist_and_stale_repvgg_branches(make_cfg):
    model = build_model(_small(make_cfg, "mg23_repvggA0_pafpn_coco.yaml", opts=["MODEL.MUTUAL_GUIDE.NUM_CLASSES", 3]))
    ours = model.state_dict()
    theirs = to_paper_state_dict(ours)
    assert "loc.0.0.conv.weight" in theirs and "conf.2.1.bias" in theirs
    assert not any(k.startswith("head.") for k in theirs)
    # what their files hold besides: the distillation branch, and the branches their code left beside stage0's
    # fused conv when it switched it to deploy form
    theirs["dist.0.0.conv.weight"] = torch.zeros(1)
    theirs["backbone.stage0.rbr_dense.conv.weight"] = torch.zeros(48, 3, 3, 3)
    theirs["backbone.stage0.rbr_1x1.bn.running_mean"] = torch.zeros(48)
    converted = convert_paper_state_dict({"model": theirs})
    assert converted.keys() == ours.keys()
    assert all(torch.equal(converted[k], ours[k]) for k in ours)
    model.load_state_dict(theirs)  # the detector's own pre-hook converts


def test_repvgg_imagenet_weights_fuse_into_the_deploy_form_stem(randomize_batchnorm):
    backbone = RepVGG2023Backbone().eval()
    trained = randomize_batchnorm(RepVGGBlock(3, 48, stride=2)).eval()
    official = {f"stage0.{k}": v for k, v in trained.state_dict().items()}
    official.update({k: v for k, v in backbone.state_dict().items() if not k.startswith("stage0.")})
    official["linear.weight"] = torch.zeros(1000, 1280)
    backbone.load_state_dict(backbone.imagenet_to_ours(official))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone.stage0(x), trained(x), atol=1e-5, rtol=1e-5)
