"""The FPN neck of the authors' code: the SSD pyramid followed by FPN's top-down path."""
from typing import List, Sequence

from torch import Tensor

from mutual_guide.modeling.neck import NECK_REGISTRY
from mutual_guide.modeling.neck.blocks import conv_list, top_down
from mutual_guide.modeling.neck.ssd import SSDNeck

__all__ = ["FPNNeck"]


class FPNNeck(SSDNeck):
    """
    SSD pyramid P_k; then L_k = lateral_convs[k](P_k) (1x1), L_k += nearest-upsample(L_{k+1}) from the top down,
    and output k = fpn_convs[k](L_k) (3x3).
    """

    def __init__(self, in_channels: Sequence[int], num_levels: int, out_channels: int = 128):
        super().__init__(in_channels, num_levels, out_channels)
        self.lateral_convs = conv_list(out_channels, num_levels, kernel_size=1)
        self.fpn_convs = conv_list(out_channels, num_levels, kernel_size=3)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        levels = self.pyramid(features)
        laterals = top_down([conv(x) for conv, x in zip(self.lateral_convs, levels)])
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


@NECK_REGISTRY.register()
def FPN(in_channels, num_levels, out_channels):
    return FPNNeck(in_channels, num_levels, out_channels)
