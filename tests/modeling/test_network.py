"""The network: builds for every backbone x neck x size, has the authors' parameter names and counts, loads
their checkpoints and ImageNet weights."""
import math

import pytest
import torch
import torchvision
from conftest import make_cfg

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

import mutual_guide.modeling.backbone  # noqa: F401  (registers the backbones)
import mutual_guide.modeling.meta_arch.detector  # noqa: F401  (registers the detector)
from mutual_guide.checkpoint import CheckpointMismatchError, MutualGuideCheckpointer
from mutual_guide.checkpoint.paper_keys import convert_paper_state_dict, to_paper_state_dict
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




def randomize_batchnorm(model, seed=0):
    """Non-trivial BN statistics and affine parameters, so that BN is not close to an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


@pytest.mark.slow
def test_parameter_count_equals_papers():
    counts = {}
    for backbone, neck, size in PAPER_PARAM_COUNTS:
        cfg = make_cfg(backbone, neck, size)
        cfg.MODEL.DEVICE = "meta"  # shapes only: no memory, no random initialisation
        with torch.device("meta"):
            model = build_model(cfg)
        counts[backbone, neck, size] = sum(p.numel() for p in model.parameters())
    assert counts == PAPER_PARAM_COUNTS


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_maps(backbone):
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
def test_predict_shapes(size, num_anchors):
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
def test_neck_levels(neck, size, sides):
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
def test_rfb_trains_and_differs_from_ssd():
    """RFB is our own neck: it must at least be a different network that backpropagates."""
    rfb = build_model(make_cfg("ShuffleNetV2", "RFB", 320))
    ssd = build_model(make_cfg("ShuffleNetV2", "SSD", 320))
    assert sum(p.numel() for p in rfb.neck.parameters()) != sum(p.numel() for p in ssd.neck.parameters())
    feats = rfb.backbone(torch.randn(2, 3, 128, 128))
    sum(x.sum() for x in rfb.neck([feats["s8"], feats["s16"]])).backward()
    assert all(p.grad is not None for p in rfb.neck.parameters())


def test_parameter_names_are_the_papers():
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


def test_convert_paper_state_dict_round_trip_and_idempotent():
    sd = build_model(make_cfg("ShuffleNetV2", "SSD", 320)).state_dict()
    assert list(convert_paper_state_dict(sd)) == list(sd)
    paper = to_paper_state_dict(sd)
    assert list(convert_paper_state_dict(paper)) == list(sd)
    wrapped = {"module." + k: v for k, v in paper.items()}
    assert list(convert_paper_state_dict({"state_dict": wrapped})) == list(sd)
    assert list(convert_paper_state_dict({"model": paper})) == list(sd)


def test_paper_checkpoint_loads_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    source = randomize_batchnorm(build_model(make_cfg("ShuffleNetV2", "PAFPN", 320))).eval()
    path = tmp_path / "paper.pth"
    torch.save({"module." + k: v for k, v in to_paper_state_dict(source.state_dict()).items()}, path)

    torch.manual_seed(1)
    target = build_model(make_cfg("ShuffleNetV2", "PAFPN", 320)).eval()
    x = torch.randn(1, 3, 128, 128)  # any multiple of 64 runs; smaller is faster
    with torch.no_grad():
        expected = source.predict(x)
        assert not torch.equal(target.predict(x)[0], expected[0])
        MutualGuideCheckpointer(target).load(str(path))
        logits, deltas = target.predict(x)
    assert torch.equal(logits, expected[0])
    assert torch.equal(deltas, expected[1])


def test_paper_checkpoint_with_other_num_classes_is_refused(tmp_path):
    source = build_model(make_cfg("ShuffleNetV2", "SSD", 320, num_classes=20))
    path = tmp_path / "voc.pth"
    torch.save(to_paper_state_dict(source.state_dict()), path)
    target = build_model(make_cfg("ShuffleNetV2", "SSD", 320, num_classes=80))
    with pytest.raises(CheckpointMismatchError, match="head.conf.0.weight"):
        MutualGuideCheckpointer(target).load(str(path))


# ---------------------------------------------------------------------------- ImageNet initialisation
def _vgg16_bn_state_dict():
    """torchvision's vgg16_bn state dict layout without building its 120M-parameter classifier."""
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    sd = {"features." + k: v for k, v in features.state_dict().items()}
    sd["classifier.6.weight"] = torch.zeros(1000, 8)  # dropped by the loader
    return sd


def test_pretrained_vgg16_file(tmp_path):
    sd = _vgg16_bn_state_dict()
    path = tmp_path / "vgg16_bn.pth"
    torch.save(sd, path)
    model = build_model(make_cfg("VGG16", "SSD", 320))
    load_pretrained_backbone(model.backbone, "VGG16", str(path))
    # features.34 is conv5_1, the first conv after pool4 (features.33)
    assert torch.equal(model.backbone.layer2[1].weight, sd["features.34.weight"])
    assert torch.equal(model.backbone.layer1[31].running_var, sd["features.31.running_var"])


def test_pretrained_resnet18_and_shufflenet_files(tmp_path):
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
def test_pretrained_repvgg_official_style_file(tmp_path):
    source = build_model(make_cfg("RepVGG", "SSD", 320)).backbone
    sd = dict(source.state_dict())
    sd["linear.weight"], sd["linear.bias"] = torch.zeros(1000, 1408), torch.zeros(1000)
    path = tmp_path / "RepVGG-A2-train.pth"
    torch.save(sd, path)
    target = build_model(make_cfg("RepVGG", "SSD", 320)).backbone
    load_pretrained_backbone(target, "RepVGG", str(path))
    assert torch.equal(target.stage3[5].rbr_dense.conv.weight, source.stage3[5].rbr_dense.conv.weight)


@pytest.mark.slow
def test_pretrained_errors_name_the_problem(tmp_path):
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


def test_head_initialisation_and_channel_layout():
    from mutual_guide.modeling.head import MutualGuideHead

    torch.manual_seed(0)
    head = MutualGuideHead(in_channels=16, num_levels=2, num_classes=3)
    assert len(head.loc) == len(head.conf) == 2 and head.loc[0] is not head.loc[1]
    assert head.conf[1].weight.shape == (6 * 3, 16, 3, 3) and head.loc[1].weight.shape == (6 * 4, 16, 3, 3)
    torch.testing.assert_close(head.conf[0].bias, torch.full((18,), -math.log(99.0)))
    assert torch.equal(head.loc[1].bias, torch.zeros(24))
    assert abs(head.conf[0].weight.std().item() - 0.01) < 0.001

    # channel anchor * C + c of level 0 at (row i, column j) is row (i * W + j) * 6 + anchor, column c after
    # detectron2's permute_to_N_HWA_K (the authors' permute + view(N, -1, C))
    from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K

    logits, _ = head([torch.randn(1, 16, 3, 5), torch.randn(1, 16, 2, 3)])
    flat = permute_to_N_HWA_K(logits[0], 3)
    i, j, anchor, c = 2, 4, 5, 1
    assert flat[0, (i * 5 + j) * 6 + anchor, c] == logits[0][0, anchor * 3 + c, i, j]


def test_plain_detection_checkpointer_loads_an_authors_checkpoint(tmp_path):
    """The contract: detectron2's own DetectionCheckpointer accepts the authors' file, {"model": state_dict}."""
    from detectron2.checkpoint import DetectionCheckpointer

    torch.manual_seed(0)
    source = build_model(make_cfg("ShuffleNetV2", "SSD", 320, 20)).eval()
    paper = to_paper_state_dict(source.state_dict())
    assert any(k.startswith("loc.") for k in paper) and not any(k.startswith("head.") for k in paper)
    paper["dist_adapter.0.weight"] = torch.zeros(3)  # distillation tensors of the authors' later files
    path = tmp_path / "paper.pth"
    torch.save({"model": paper}, path)
    torch.manual_seed(1)
    target = build_model(make_cfg("ShuffleNetV2", "SSD", 320, 20)).eval()
    DetectionCheckpointer(target).load(str(path))
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        expected, got = source.predict(x), target.predict(x)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
