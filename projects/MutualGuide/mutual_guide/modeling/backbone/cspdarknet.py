"""CSPDarknet (YOLOX's backbone, Ge et al. 2021) as the authors' code at 108b4a8 uses it: dark4 at stride 16,
dark5 at stride 32. Module names are YOLOX's (`stem`, `dark2`..`dark5`), so YOLOX's checkpoints load by name."""
from typing import Dict

import torch
from torch import Tensor, nn

from detectron2.modeling import BACKBONE_REGISTRY

from mutual_guide.modeling.backbone import TwoMapBackbone, check_input_shape

__all__ = ["CSPDarknetBackbone", "CSPDARKNET_VERSIONS"]

# MODEL.BACKBONE.VERSION -> (depth multiplier, width multiplier), YOLOX-S and YOLOX-M
CSPDARKNET_VERSIONS = {"0.5x": (0.33, 0.5), "0.75x": (0.67, 0.75)}


class BaseConv(nn.Module):
    """conv ("same" padding, no bias) -> BatchNorm -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Focus(nn.Module):
    """Space to depth: the four pixels of each 2x2 cell become channels (order: top-left, bottom-left, top-right,
    bottom-right, YOLOX's), then a BaseConv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = BaseConv(in_channels * 4, out_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        cells = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(cells, dim=1))


class Bottleneck(nn.Module):
    """1x1 then 3x3 BaseConv, plus the input when `shortcut` and the widths agree."""

    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.conv1 = BaseConv(channels, channels, 1)
        self.conv2 = BaseConv(channels, channels, 3)
        self.use_add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """conv3(cat(m(conv1(x)), conv2(x))): two 1x1 halves, `n` bottlenecks on the first (YOLOv5's C3)."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        hidden = int(out_channels * 0.5)
        self.conv1 = BaseConv(in_channels, hidden, 1)
        self.conv2 = BaseConv(in_channels, hidden, 1)
        self.conv3 = BaseConv(2 * hidden, out_channels, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, shortcut) for _ in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class SPPBottleneck(nn.Module):
    """conv2(cat(x, maxpool_5(x), maxpool_9(x), maxpool_13(x))) with x = conv1(input) at half width."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes=(5, 9, 13)):
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = BaseConv(in_channels, hidden, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class CSPDarknetBackbone(TwoMapBackbone):
    """
    YOLOX's CSPDarknet at width w and depth d (`CSPDARKNET_VERSIONS`): base width 64 w, base depth
    max(round(3 d), 1); `stem` (Focus, stride 2), `dark2`..`dark5` (a stride-2 BaseConv and CSP layers; dark5 adds
    SPP). dark4 (8 x base width) at stride 16 and dark5 (16 x base width) at stride 32 go to the neck.
    """

    def __init__(self, version: str = "0.5x"):
        if version not in CSPDARKNET_VERSIONS:
            raise ValueError(
                f"MODEL.BACKBONE.VERSION of CSPDarknet must be one of {sorted(CSPDARKNET_VERSIONS)}, got {version!r}"
            )
        depth, width = CSPDARKNET_VERSIONS[version]
        c = int(width * 64)
        n = max(round(depth * 3), 1)
        super().__init__((8 * c, 16 * c), strides=(16, 32))
        self.stem = Focus(3, c, kernel_size=3)
        self.dark2 = nn.Sequential(BaseConv(c, 2 * c, 3, 2), CSPLayer(2 * c, 2 * c, n=n))
        self.dark3 = nn.Sequential(BaseConv(2 * c, 4 * c, 3, 2), CSPLayer(4 * c, 4 * c, n=3 * n))
        self.dark4 = nn.Sequential(BaseConv(4 * c, 8 * c, 3, 2), CSPLayer(8 * c, 8 * c, n=3 * n))
        self.dark5 = nn.Sequential(
            BaseConv(8 * c, 16 * c, 3, 2), SPPBottleneck(16 * c, 16 * c), CSPLayer(16 * c, 16 * c, n=n, shortcut=False)
        )

    def features(self, x: Tensor):
        s16 = self.dark4(self.dark3(self.dark2(self.stem(x))))
        return s16, self.dark5(s16)

    def stages(self):
        """The stem (Focus), then dark2..dark5."""
        return [[self.stem], [self.dark2], [self.dark3], [self.dark4], [self.dark5]]

    @staticmethod
    def imagenet_to_ours(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A YOLOX detector checkpoint (yolox_s.pth / yolox_m.pth, the authors' initialisation): its
        `backbone.backbone.*` tensors, renamed; the rest of the detector is dropped."""
        prefix = "backbone.backbone."
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        return sd

    def torchvision_state_dict(self):
        raise ValueError(
            "CSPDarknet has no torchvision ImageNet weights: set MODEL.BACKBONE.PRETRAINED to a local copy of "
            "YOLOX's yolox_s.pth (VERSION 0.5x) or yolox_m.pth (VERSION 0.75x), as the authors' code at 108b4a8 does"
        )


@BACKBONE_REGISTRY.register()
def CSPDarknet(cfg, input_shape):
    """Registered as "CSPDarknet" (2023 network): MODEL.BACKBONE.VERSION "0.5x" (256 / 512 channels) or "0.75x"
    (384 / 768) at strides 16 / 32."""
    check_input_shape(input_shape, "CSPDarknet")
    return CSPDarknetBackbone(cfg.MODEL.BACKBONE.VERSION).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
