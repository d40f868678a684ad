"""
An RFB neck: the SSD neck with RFBNet's receptive-field blocks in place of its plain 3x3 convs.

The authors' repository has no RFB neck, so this form is ours. It follows RFBNet's `BasicRFB`
(Liu et al., ECCV 2018, "Receptive Field Block Net"): branches that see the same input through 3x3 convs of
increasing dilation, concatenated, projected by a 1x1 conv, scaled and added to a 1x1 shortcut.
"""
import torch
from torch import Tensor, nn

from mutual_guide.modeling.neck import NECK_REGISTRY
from mutual_guide.modeling.neck.blocks import ConvBNReLU
from mutual_guide.modeling.neck.ssd import SSDNeck

__all__ = ["ReceptiveFieldBlock", "RFBNeck"]


class ReceptiveFieldBlock(nn.Module):
    """
    branch d (d = 1, 3, 5): 1x1 conv to in/8 channels -> 3x3 conv (stride s) -> 3x3 conv with dilation d
    (no ReLU); cat -> `conv_linear` 1x1 to out (no ReLU); out = ReLU(scale * that + shortcut(x)),
    shortcut = 1x1 conv stride s (no ReLU). `scale` = 0.1 as in RFBNet keeps the block close to the shortcut
    at initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, scale: float = 0.1):
        super().__init__()
        inter = max(in_channels // 8, 8)
        self.scale = scale
        self.branches = nn.ModuleList(
            nn.Sequential(
                ConvBNReLU(in_channels, inter, 1),
                ConvBNReLU(inter, inter, 3, stride=stride, padding=1),
                ConvBNReLU(inter, inter, 3, padding=d, dilation=d, relu=False),
            )
            for d in (1, 3, 5)
        )
        self.conv_linear = ConvBNReLU(3 * inter, out_channels, 1, relu=False)
        self.shortcut = ConvBNReLU(in_channels, out_channels, 1, stride=stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_linear(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.relu(out * self.scale + self.shortcut(x))


class RFBNeck(SSDNeck):
    """SSD neck whose `pyramid_ext` is RFB blocks: stride 1 at level 0, stride 2 for each further level."""

    def build_pyramid(self, in_channels: int, out_channels: int, num_levels: int) -> nn.ModuleList:
        return nn.ModuleList(
            [ReceptiveFieldBlock(in_channels, out_channels)]
            + [ReceptiveFieldBlock(out_channels, out_channels, stride=2) for _ in range(num_levels - 1)]
        )


@NECK_REGISTRY.register()
def RFB(in_channels, num_levels, out_channels):
    return RFBNeck(in_channels, num_levels, out_channels)
