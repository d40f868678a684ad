"""The network: builds for every backbone x neck x size, has the authors' parameter names and counts, loads
ImageNet weights."""
import math

import pytest
import torch
import torchvision

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from mutual_guide.checkpoint.paper_keys import to_paper_state_dict
from mutual_guide.modeling.backbone import load_pretrained_backbone
from mutual_guide.modeling.neck import build_neck

BACKBONES = ["VGG16", "ResNet18", "RepVGG", "ShuffleNetV2"]

# Parameters of the authors' `Detector(size, num_classes=81, backbone, neck)` (80 classes + their background
# slot), counted by running their code (zhanghengdev/MutualGuide, models/detector.py at commit 251eb45e158065a9e
# 61d4eda19c472b153f7a757 with that commit's pafpn_neck.py / repvgg / shufflenet backbones; ssd_neck.py,
# fpn_neck.py, base_blocks.py, vgg and resnet backbones from the same repository's versions of that period)
# side by side with ours: same keys, same shapes, and equal outputs for the same weights and input.
PAPER_PARAM_COUNTS = {
    ("VGG16", "SSD", 320): 17918240, ("VGG16", "SSD", 512): 18647192,
    ("VGG16", "FPN", 320): 18576672, ("VGG16", "FPN", 512): 19470232,
    ("VGG16", "PAFPN", 320): 19530016, ("VGG16", "PAFPN", 512): 20719256,
    ("ResNet18", "SSD", 320): 14338848, ("ResNet18", "SSD", 512): 15067800,
    ("ResNet18", "FPN", 320): 14997280, ("ResNet18", "FPN", 512): 15890840,
    ("ResNet18", "PAFPN", 320): 15950624, ("ResNet18", "PAFPN", 512): 17139864,
    ("RepVGG", "SSD", 320): 30095008, ("RepVGG", "SSD", 512): 30823960,
    ("RepVGG", "FPN", 320): 30753440, ("RepVGG", "FPN", 512): 31647000,
    ("RepVGG", "PAFPN", 320): 31821472, ("RepVGG", "PAFPN", 512): 33010712,
    ("ShuffleNetV2", "SSD", 320): 3929540, ("ShuffleNetV2", "SSD", 512): 4658492,
    ("ShuffleNetV2", "FPN", 320): 4587972, ("ShuffleNetV2", "FPN", 512): 5481532,
    ("ShuffleNetV2", "PAFPN", 320): 5535172, ("ShuffleNetV2", "PAFPN", 512): 6724412,
}
BACKBONE_CHANNELS = {"VGG16": (512, 512), "ResNet18": (256, 512), "RepVGG": (384, 1408), "ShuffleNetV2": (232, 464)}


@pytest.mark.slow
def test_parameter_count_equals_papers(make_cfg):
    counts = {}
    for backbone, neck, size in PAPER_PARAM_COUNTS:
        cfg = make_cfg(backbone, neck, size)
        cfg.MODEL.DEVICE = "meta"  # shapes only: no memory, no random initialisation
        with torch.device("meta"):
            model = build_model(cfg)
        counts[backbone, neck, size] = sum(p.numel() for p in model.parameters())
    assert counts == PAPER_PARAM_COUNTS


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_maps(backbone, make_cfg):
    model = build_model(make_cfg(backbone, "SSD", 320)).eval()
    c8, c16 = BACKBONE_CHANNELS[backbone]
    shapes = model.backbone.output_shape()
    assert (shapes["s8"].channels, shapes["s8"].stride, shapes["s16"].channels, shapes["s16"].stride) == (
        c8, 8, c16, 16
    )
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert feats["s8"].shape == (1, c8, 8, 12)
    assert feats["s16"].shape == (1, c16, 4, 6)


@pytest.mark.slow
@pytest.mark.parametrize("size,num_anchors", [(320, 12750), (512, 32736)])
def test_predict_shapes(size, num_anchors, make_cfg):
    # 6 anchors on 40^2 + 20^2 + 10^2 + 5^2 locations at 320, 64^2 + ... + 4^2 at 512
    model = build_model(make_cfg("ShuffleNetV2", "FPN", size)).eval()
    with torch.no_grad():
        logits, deltas = model.predict(torch.randn(1, 3, size, size))
    assert logits.shape == (1, num_anchors, 80)
    assert deltas.shape == (1, num_anchors, 4)
    assert model.anchors.shape == (num_anchors, 4)
    # the head's initial class prior: sigmoid(bias) = 0.01, up to the small N(0, 0.01) weights
    assert abs(logits.sigmoid().mean().item() - 0.01) < 0.002


@pytest.mark.slow
@pytest.mark.parametrize("neck", ["SSD", "FPN", "PAFPN", "RFB"])
@pytest.mark.parametrize("size,sides", [(320, [40, 20, 10, 5]), (512, [64, 32, 16, 8, 4])])
def test_neck_levels(neck, size, sides, make_cfg):
    cfg = make_cfg("ShuffleNetV2", neck, size)
    shapes = {"s8": ShapeSpec(channels=232, stride=8), "s16": ShapeSpec(channels=464, stride=16)}
    model = build_neck(cfg, shapes).eval()
    assert model.num_levels == len(sides)
    assert model.out_channels == 128
    s = size // 8
    with torch.no_grad():
        levels = model([torch.randn(2, 232, s, s), torch.randn(2, 464, s // 2, s // 2)])
    assert [tuple(x.shape) for x in levels] == [(2, 128, s, s) for s in sides]


@pytest.mark.slow
def test_rfb_trains_and_differs_from_ssd(make_cfg):
    """RFB is our own neck: it must at least be a different network that backpropagates."""
    rfb = build_model(make_cfg("ShuffleNetV2", "RFB", 320))
    ssd = build_model(make_cfg("ShuffleNetV2", "SSD", 320))
    assert sum(p.numel() for p in rfb.neck.parameters()) != sum(p.numel() for p in ssd.neck.parameters())
    feats = rfb.backbone(torch.randn(2, 3, 128, 128))
    sum(x.sum() for x in rfb.neck([feats["s8"], feats["s16"]])).backward()
    assert all(p.grad is not None for p in rfb.neck.parameters())


def test_parameter_names_are_the_papers(make_cfg):
    keys = set(build_model(make_cfg("VGG16", "PAFPN", 320)).state_dict())
    for key in [
        "backbone.layer1.0.weight",  # conv1_1
        "backbone.layer2.1.weight",  # conv5_1 (layer2 starts with pool4)
        "backbone.layer2.8.running_var",  # conv5_3's BN
        "neck.ft_module.cv2.conv.weight",
        "neck.ft_module.cv3.bn.running_mean",
        "neck.pyramid_ext.3.conv.weight",
        "neck.downsample_convs.2.bn.weight",
        "neck.pafpn_convs.3.conv.bias",
        "head.loc.3.weight",
        "head.conf.0.bias",
    ]:
        assert key in keys
    assert "neck.pyramid_ext.4.conv.weight" not in keys  # 4 levels at 320
    paper_keys = set(to_paper_state_dict(dict.fromkeys(keys)))
    assert {"loc.0.weight", "conf.3.bias", "backbone.layer1.0.weight"} <= paper_keys
    assert not any(k.startswith("head.") for k in paper_keys)


# ---------------------------------------------------------------------------- ImageNet initialisation
def _vgg16_bn_state_dict():
    """torchvision's vgg16_bn state dict layout without building its 120M-parameter classifier."""
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    sd = {"features." + k: v for k, v in features.state_dict().items()}
    sd["classifier.6.weight"] = torch.zeros(1000, 8)  # dropped by the loader
    return sd


def test_pretrained_vgg16_file(tmp_path, make_cfg):
    sd = _vgg16_bn_state_dict()
    path = tmp_path / "vgg16_bn.pth"
    torch.save(sd, path)
    model = build_model(make_cfg("VGG16", "SSD", 320))
    load_pretrained_backbone(model.backbone, "VGG16", str(path))
    # features.34 is conv5_1, the first conv after pool4 (features.33)
    assert torch.equal(model.backbone.layer2[1].weight, sd["features.34.weight"])
    assert torch.equal(model.backbone.layer1[31].running_var, sd["features.31.running_var"])


def test_pretrained_resnet18_and_shufflenet_files(tmp_path, make_cfg):
    for name, net, key in [
        ("ResNet18", torchvision.models.resnet18(), "layer4.1.conv2.weight"),
        ("ShuffleNetV2", torchvision.models.shufflenet_v2_x1_0(), "stage4.3.branch2.3.weight"),
    ]:
        sd = net.state_dict()
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
        model = build_model(make_cfg(name, "SSD", 320))
        assert not torch.equal(model.backbone.state_dict()[key], sd[key])
        load_pretrained_backbone(model.backbone, name, str(path))
        assert torch.equal(model.backbone.state_dict()[key], sd[key])


@pytest.mark.slow
def test_pretrained_repvgg_official_style_file(tmp_path, make_cfg):
    source = build_model(make_cfg("RepVGG", "SSD", 320)).backbone
    sd = dict(source.state_dict())
    sd["linear.weight"], sd["linear.bias"] = torch.zeros(1000, 1408), torch.zeros(1000)
    path = tmp_path / "RepVGG-A2-train.pth"
    torch.save(sd, path)
    target = build_model(make_cfg("RepVGG", "SSD", 320)).backbone
    load_pretrained_backbone(target, "RepVGG", str(path))
    assert torch.equal(target.stage3[5].rbr_dense.conv.weight, source.stage3[5].rbr_dense.conv.weight)


@pytest.mark.slow
def test_pretrained_errors_name_the_problem(tmp_path, make_cfg):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    vgg = build_model(make_cfg("VGG16", "SSD", 320)).backbone
    with pytest.raises(ValueError, match=r"resnet18\.pth.*\n.*(missing|not in the model)"):
        load_pretrained_backbone(vgg, "VGG16", str(path))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained_backbone(vgg, "VGG16", str(tmp_path / "nowhere.pth"))
    repvgg = build_model(make_cfg("RepVGG", "SSD", 320)).backbone
    with pytest.raises(ValueError, match="no torchvision"):
        load_pretrained_backbone(repvgg, "RepVGG", "torchvision")


def test_head_initialisation_and_channels():
    from mutual_guide.modeling.head import MutualGuideHead

    torch.manual_seed(0)
    head = MutualGuideHead(in_channels=16, num_levels=2, num_classes=3)
    assert len(head.loc) == len(head.conf) == 2 and head.loc[0] is not head.loc[1]
    assert head.conf[1].weight.shape == (6 * 3, 16, 3, 3) and head.loc[1].weight.shape == (6 * 4, 16, 3, 3)
    torch.testing.assert_close(head.conf[0].bias, torch.full((18,), -math.log(99.0)))
    assert torch.equal(head.loc[1].bias, torch.zeros(24))
    assert abs(head.conf[0].weight.std().item() - 0.01) < 0.001
    logits, deltas = head([torch.randn(1, 16, 3, 5), torch.randn(1, 16, 2, 3)])
    # per level [N, A*K, H, W], the layout detectron2's transpose (tests/utils/test_detectron2_compat.py) reads
    assert [x.shape for x in logits] == [(1, 18, 3, 5), (1, 18, 2, 3)]
    assert [x.shape for x in deltas] == [(1, 24, 3, 5), (1, 24, 2, 3)]
