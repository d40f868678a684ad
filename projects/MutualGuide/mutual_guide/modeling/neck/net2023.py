"""The necks of the 2023 network (the authors' code at 108b4a8): SSD2023, FPN2023, PAFPN2023.

They take the backbone's maps at strides 16 and 32 and give 3 levels (strides 16, 32, 64) up to a 640 input, 4
above. Each is the one before plus a path: SSD2023 = context enhancement + strided convs; FPN2023 adds FPN's
top-down path; PAFPN2023 adds PANet's bottom-up path. Every conv is a `conv_blocks` unit (BasicConv, or
DepthwiseConv for the ShuffleNet rows), 3x3 unless said otherwise; upsampling is bilinear.
"""
from typing import List, Sequence, Type

import torch.nn.functional as F
from torch import Tensor, nn

from mutual_guide.modeling.conv_blocks import CONV_BLOCKS
from mutual_guide.modeling.neck import NECK_REGISTRY

__all__ = ["ContextEnhancement2023", "SSD2023Neck", "FPN2023Neck", "PAFPN2023Neck"]


class ContextEnhancement2023(nn.Module):
    """
    SiLU(conv1(C16) + conv2(C32) upsampled x2 + conv3(global average of C32)), each conv a 1x1 unit without
    activation: `conv2` and `conv3` are nn.Sequential (conv, nn.Upsample) and (pool, conv), the authors' layout.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, block: Type[nn.Module]):
        super().__init__()
        c16, c32 = in_channels
        self.conv1 = block(c16, out_channels, kernel_size=1, act=False)
        self.conv2 = nn.Sequential(
            block(c32, out_channels, kernel_size=1, act=False), nn.Upsample(scale_factor=2, mode="bilinear")
        )
        self.conv3 = nn.Sequential(nn.AdaptiveAvgPool2d(1), block(c32, out_channels, kernel_size=1, act=False))
        self.act = nn.SiLU(inplace=True)

    def forward(self, features: List[Tensor]) -> Tensor:
        c16, c32 = features
        out = self.conv2(c32) + self.conv1(c16)  # the authors' order of the sum (last bits)
        return self.act(out + self.conv3(c32))


def _convs(block, channels: int, count: int, stride: int = 1) -> nn.ModuleList:
    return nn.ModuleList(block(channels, channels, kernel_size=3, stride=stride, padding=1) for _ in range(count))


class SSD2023Neck(nn.Module):
    """Level 0 = `ft_module` (context enhancement); level k = `pyramid_ext[k-1]` (stride 2) of level k - 1."""

    def __init__(self, in_channels: Sequence[int], num_levels: int, out_channels: int, conv_block: str = "basic"):
        super().__init__()
        if conv_block not in CONV_BLOCKS:
            raise ValueError(f"MODEL.NECK.CONV_BLOCK must be one of {sorted(CONV_BLOCKS)}, got {conv_block!r}")
        block = CONV_BLOCKS[conv_block]
        self.num_levels = num_levels
        self.out_channels = out_channels
        self.ft_module = ContextEnhancement2023(in_channels, out_channels, block)
        self.pyramid_ext = _convs(block, out_channels, num_levels - 1, stride=2)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        x = self.ft_module(features)
        levels = [x]
        for conv in self.pyramid_ext:
            x = conv(x)
            levels.append(x)
        return levels


class FPN2023Neck(SSD2023Neck):
    """L_k = lateral_convs[k](P_k) (3x3), L_k += bilinear x2 of L_{k+1} from the top down, output fpn_convs[k](L_k)."""

    def __init__(self, in_channels: Sequence[int], num_levels: int, out_channels: int, conv_block: str = "basic"):
        super().__init__(in_channels, num_levels, out_channels, conv_block)
        block = CONV_BLOCKS[conv_block]
        self.lateral_convs = _convs(block, out_channels, num_levels)
        self.fpn_convs = _convs(block, out_channels, num_levels)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        levels = [conv(x) for conv, x in zip(self.lateral_convs, super().forward(features))]
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + F.interpolate(levels[i], scale_factor=2.0, mode="bilinear")
        return [conv(x) for conv, x in zip(self.fpn_convs, levels)]


class PAFPN2023Neck(FPN2023Neck):
    """FPN2023, then F_{k+1} += downsample_convs[k](F_k) (stride 2, bottom-up), output pafpn_convs[k](F_k)."""

    def __init__(self, in_channels: Sequence[int], num_levels: int, out_channels: int, conv_block: str = "basic"):
        super().__init__(in_channels, num_levels, out_channels, conv_block)
        block = CONV_BLOCKS[conv_block]
        self.downsample_convs = _convs(block, out_channels, num_levels - 1, stride=2)
        self.pafpn_convs = _convs(block, out_channels, num_levels)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        levels = super().forward(features)
        for i, down in enumerate(self.downsample_convs):
            levels[i + 1] = levels[i + 1] + down(levels[i])
        return [conv(x) for conv, x in zip(self.pafpn_convs, levels)]


@NECK_REGISTRY.register()
def SSD2023(in_channels, num_levels, out_channels, conv_block="basic"):
    return SSD2023Neck(in_channels, num_levels, out_channels, conv_block)


@NECK_REGISTRY.register()
def FPN2023(in_channels, num_levels, out_channels, conv_block="basic"):
    return FPN2023Neck(in_channels, num_levels, out_channels, conv_block)


@NECK_REGISTRY.register()
def PAFPN2023(in_channels, num_levels, out_channels, conv_block="basic"):
    return PAFPN2023Neck(in_channels, num_levels, out_channels, conv_block)
