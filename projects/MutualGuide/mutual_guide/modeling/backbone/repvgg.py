"""RepVGG-A2 (Ding et al., CVPR 2021) with a stride-1 first block: stage3 at stride 8, stage4 at stride 16."""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.modeling import BACKBONE_REGISTRY

from mutual_guide.modeling.backbone import TwoMapBackbone, check_input_shape

__all__ = ["RepVGGBlock", "RepVGGBackbone", "RepVGG2023Backbone"]


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> nn.Sequential:
    """conv (no bias) + BN named `conv` / `bn`, the official RepVGG branch."""
    branch = nn.Sequential()
    branch.add_module(
        "conv",
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
    )
    branch.add_module("bn", nn.BatchNorm2d(out_channels))
    return branch


def _fuse_conv_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """The kernel and bias of `bn(conv(x))` as one conv (BN in inference form, torch's own fusion arithmetic)."""
    weight, bias = fuse_conv_bn_weights(kernel, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return weight.data, bias.data


class RepVGGBlock(nn.Module):
    """
    Training form: ReLU(3x3 conv-BN + 1x1 conv-BN + BN(x) when shapes allow), official names `rbr_dense`,
    `rbr_1x1`, `rbr_identity`. Deploy form: ReLU(`rbr_reparam`(x)), one 3x3 conv with bias computing the same
    function in inference; `switch_to_deploy()` converts in place.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, deploy: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.groups = groups
        self.nonlinearity = nn.ReLU()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=True)
        else:
            has_identity = in_channels == out_channels and stride == 1
            self.rbr_identity = nn.BatchNorm2d(in_channels) if has_identity else None
            self.rbr_dense = _conv_bn(in_channels, out_channels, 3, stride, groups)
            self.rbr_1x1 = _conv_bn(in_channels, out_channels, 1, stride, groups)

    @property
    def deploy(self) -> bool:
        return hasattr(self, "rbr_reparam")

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> Tuple[Tensor, Tensor]:
        """One 3x3 kernel and bias equal to the three branches with their BatchNorms in inference form."""
        kernel, bias = _fuse_conv_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = _fuse_conv_bn(F.pad(self.rbr_1x1.conv.weight, [1, 1, 1, 1]), self.rbr_1x1.bn)
        kernel, bias = kernel + k1, bias + b1
        if self.rbr_identity is not None:
            per_group = self.in_channels // self.groups
            identity = torch.zeros_like(kernel)
            for c in range(self.in_channels):
                identity[c, c % per_group, 1, 1] = 1.0
            kid, bid = _fuse_conv_bn(identity, self.rbr_identity)
            kernel, bias = kernel + kid, bias + bid
        return kernel, bias

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if self.deploy:
            return
        kernel, bias = self.equivalent_kernel_bias()
        dense = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(
            dense.in_channels, dense.out_channels, 3, dense.stride, 1, groups=dense.groups, bias=True
        ).to(kernel.device)
        self.rbr_reparam.weight.copy_(kernel)
        self.rbr_reparam.bias.copy_(bias)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity


class RepVGGBackbone(TwoMapBackbone):
    """
    RepVGG-A2: blocks [1, 2, 4, 14, 1] of widths [64, 96, 192, 384, 1408], official names `stage0`..`stage4`.
    Unlike the classifier, `stage0` has stride 1, so stage3 (384 channels) is at stride 8 and stage4 (1408) at 16.
    """

    NUM_BLOCKS = (2, 4, 14, 1)
    WIDTH_MULTIPLIER = (1.5, 1.5, 1.5, 2.75)

    def __init__(self, deploy: bool = False):
        widths = [int(base * m) for base, m in zip((64, 128, 256, 512), self.WIDTH_MULTIPLIER)]
        super().__init__((widths[2], widths[3]))
        in_planes = min(64, widths[0])
        self.stage0 = RepVGGBlock(3, in_planes, stride=1, deploy=deploy)
        for i, (planes, blocks) in enumerate(zip(widths, self.NUM_BLOCKS)):
            stage = []
            for stride in [2] + [1] * (blocks - 1):
                stage.append(RepVGGBlock(in_planes, planes, stride=stride, deploy=deploy))
                in_planes = planes
            setattr(self, f"stage{i + 1}", nn.Sequential(*stage))

    def features(self, x: Tensor):
        x = self.stage2(self.stage1(self.stage0(x)))
        s8 = self.stage3(x)
        return s8, self.stage4(s8)

    def stages(self):
        """The stem (stage0, one block), then stage1..stage4."""
        return [[self.stage0], [self.stage1], [self.stage2], [self.stage3], [self.stage4]]

    @staticmethod
    def imagenet_to_ours(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The official RepVGG keys are ours; the classifier `linear.*` is dropped."""
        return {k: v for k, v in sd.items() if not k.startswith("linear.")}

    def torchvision_state_dict(self):
        raise ValueError(
            "RepVGG has no torchvision ImageNet weights: set MODEL.BACKBONE.PRETRAINED to a local copy of the "
            "official RepVGG-A2-train.pth (or a deploy-form file with MODEL.BACKBONE.REPVGG_DEPLOY True)"
        )


@BACKBONE_REGISTRY.register()
def RepVGG(cfg, input_shape):
    """Registered as "RepVGG": RepVGG-A2, 384 / 1408 channels at strides 8 / 16; deploy form by REPVGG_DEPLOY."""
    check_input_shape(input_shape, "RepVGG")
    return RepVGGBackbone(deploy=cfg.MODEL.BACKBONE.REPVGG_DEPLOY).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


class RepVGG2023Backbone(TwoMapBackbone):
    """
    RepVGG-A0 as the authors' code at 108b4a8 trains it: the classifier's strides (stage0 at stride 2), blocks
    [1, 2, 4, 14, 1] of widths [48, 48, 96, 192, 1280]; stage3 at stride 16 and stage4 at stride 32.

    `stage0` and `stage1` are in deploy form (one 3x3 conv each): their code, given ImageNet weights, switches
    those blocks to deploy form when it builds the backbone, and the fused convs then train with the rest (the
    branches it meant to freeze are no longer used). `deploy=True` puts every block in deploy form.
    """

    NUM_BLOCKS = (2, 4, 14, 1)
    WIDTH_MULTIPLIER = (0.75, 0.75, 0.75, 2.5)
    DEPLOY_STAGES = ("stage0", "stage1")

    def __init__(self, deploy: bool = False):
        widths = [int(base * m) for base, m in zip((64, 128, 256, 512), self.WIDTH_MULTIPLIER)]
        super().__init__((widths[2], widths[3]), strides=(16, 32))
        in_planes = min(64, widths[0])
        self.stage0 = RepVGGBlock(3, in_planes, stride=2, deploy=True)
        for i, (planes, blocks) in enumerate(zip(widths, self.NUM_BLOCKS)):
            stage = []
            for stride in [2] + [1] * (blocks - 1):
                stage.append(RepVGGBlock(in_planes, planes, stride=stride, deploy=deploy or i == 0))
                in_planes = planes
            setattr(self, f"stage{i + 1}", nn.Sequential(*stage))

    def features(self, x: Tensor):
        x = self.stage2(self.stage1(self.stage0(x)))
        s16 = self.stage3(x)
        return s16, self.stage4(s16)

    def stages(self):
        """The stem (stage0, one block), then stage1..stage4."""
        return [[self.stage0], [self.stage1], [self.stage2], [self.stage3], [self.stage4]]

    def imagenet_to_ours(self, sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """
        The official RepVGG-A0-train.pth keys, the classifier `linear.*` dropped; the branches of each block that
        is in deploy form here are fused into its `rbr_reparam` (`RepVGGBlock.equivalent_kernel_bias`).
        """
        sd = {k: v for k, v in sd.items() if not k.startswith("linear.")}
        for name, block in self.named_modules():
            if not isinstance(block, RepVGGBlock) or not block.deploy or f"{name}.rbr_dense.conv.weight" not in sd:
                continue
            conv = block.rbr_reparam
            branches = RepVGGBlock(conv.in_channels, conv.out_channels, stride=conv.stride[0])
            own = {k[len(name) + 1:]: sd.pop(k) for k in list(sd) if k.startswith(name + ".")}
            branches.load_state_dict(own)
            branches.eval()
            kernel, bias = branches.equivalent_kernel_bias()
            sd[f"{name}.rbr_reparam.weight"], sd[f"{name}.rbr_reparam.bias"] = kernel, bias
        return sd

    def torchvision_state_dict(self):
        raise ValueError(
            "RepVGG has no torchvision ImageNet weights: set MODEL.BACKBONE.PRETRAINED to a local copy of the "
            "official RepVGG-A0-train.pth"
        )


@BACKBONE_REGISTRY.register()
def RepVGG2023(cfg, input_shape):
    """Registered as "RepVGG2023" (2023 network): RepVGG-A0, 192 / 1280 channels at strides 16 / 32, stage0 and
    stage1 in deploy form (all blocks with REPVGG_DEPLOY). MODEL.BACKBONE.VERSION "A0" (or "")."""
    check_input_shape(input_shape, "RepVGG2023")
    if cfg.MODEL.BACKBONE.VERSION not in ("", "A0"):
        raise ValueError(f"MODEL.BACKBONE.VERSION of RepVGG2023 must be \"A0\", got {cfg.MODEL.BACKBONE.VERSION!r}")
    return RepVGG2023Backbone(deploy=cfg.MODEL.BACKBONE.REPVGG_DEPLOY).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
