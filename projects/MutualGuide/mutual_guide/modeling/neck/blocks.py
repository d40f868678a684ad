"""The conv + BatchNorm + ReLU unit every neck is made of, and the layer lists the necks share.

Attribute names (`conv`, `bn`) and list names follow the authors' code so their checkpoints load unchanged.
"""
from typing import List

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNReLU", "pyramid_extractor", "conv_list"]


class ConvBNReLU(nn.Module):
    """
    conv -> BatchNorm(eps 1e-5, momentum 0.01) -> ReLU (optional) -> nearest upsampling by `upsample` (optional).

    The conv keeps its bias although a BatchNorm follows: the authors' layer has one, so their checkpoints carry
    it. `deploy.fold_batchnorm` folds `bn` into `conv` for inference.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        relu: bool = True,
        upsample: int = 1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=True
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.01)
        self.relu = nn.ReLU(inplace=True) if relu else None
        self.upsample = upsample

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        if self.relu is not None:
            x = self.relu(x)
        if self.upsample != 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return x


def pyramid_extractor(in_channels: int, channels: int, num_levels: int) -> nn.ModuleList:
    """A 3x3 conv at stride 8, then one stride-2 3x3 conv per further level (each applied to the previous)."""
    layers = [ConvBNReLU(in_channels, channels, 3, padding=1)]
    layers += [ConvBNReLU(channels, channels, 3, stride=2, padding=1) for _ in range(num_levels - 1)]
    return nn.ModuleList(layers)


def conv_list(channels: int, num_levels: int, kernel_size: int, stride: int = 1) -> nn.ModuleList:
    """`num_levels` independent convs channels -> channels ("same" padding)."""
    return nn.ModuleList(
        ConvBNReLU(channels, channels, kernel_size, stride=stride, padding=kernel_size // 2)
        for _ in range(num_levels)
    )


def top_down(laterals: List[Tensor]) -> List[Tensor]:
    """FPN's top-down path: from the coarsest level, add the nearest-upsampled level above to each level."""
    out = list(laterals)
    for i in range(len(out) - 1, 0, -1):
        out[i - 1] = out[i - 1] + F.interpolate(out[i], size=out[i - 1].shape[-2:], mode="nearest")
    return out
