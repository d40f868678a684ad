"""The SSD neck of the authors' code: fuse the two backbone maps once, then strided convs for each level."""
from typing import List, Sequence

import torch
from torch import Tensor, nn

from mutual_guide.modeling.neck import NECK_REGISTRY
from mutual_guide.modeling.neck.blocks import ConvBNReLU, pyramid_extractor

__all__ = ["SSDNeck"]


class SSDNeck(nn.Module):
    """
    `ft_module[i]`: 1x1 conv of backbone map i to `out_channels`, upsampled x2**i to stride 8; the maps are
    concatenated; `pyramid_ext[0]` (3x3) makes level 0 and `pyramid_ext[k]` (3x3, stride 2) level k from level k-1.
    """

    def __init__(self, in_channels: Sequence[int], num_levels: int, out_channels: int = 128):
        super().__init__()
        self.num_levels = num_levels
        self.out_channels = out_channels
        self.ft_module = nn.ModuleList(
            ConvBNReLU(c, out_channels, 1, upsample=2**i) for i, c in enumerate(in_channels)
        )
        self.pyramid_ext = self.build_pyramid(out_channels * len(in_channels), out_channels, num_levels)

    def build_pyramid(self, in_channels: int, out_channels: int, num_levels: int) -> nn.ModuleList:
        """The layers making level 0 from the fused map and each further level from the one before."""
        return pyramid_extractor(in_channels, out_channels, num_levels)

    def pyramid(self, features: List[Tensor]) -> List[Tensor]:
        x = torch.cat([transform(f) for transform, f in zip(self.ft_module, features)], dim=1)
        levels = []
        for conv in self.pyramid_ext:
            x = conv(x)
            levels.append(x)
        return levels

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        return self.pyramid(features)


@NECK_REGISTRY.register()
def SSD(in_channels, num_levels, out_channels):
    return SSDNeck(in_channels, num_levels, out_channels)
