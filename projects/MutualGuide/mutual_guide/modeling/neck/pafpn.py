"""The PAFPN neck of the authors' code: context enhancement, pyramid, top-down and bottom-up paths."""
from typing import List, Sequence

from torch import Tensor, nn

from mutual_guide.modeling.neck import NECK_REGISTRY
from mutual_guide.modeling.neck.blocks import ConvBNReLU, conv_list, pyramid_extractor, top_down

__all__ = ["ContextEnhancement", "PAFPNNeck"]


class ContextEnhancement(nn.Module):
    """
    The authors' context enhancement module (CEM), at stride 8:
    cv1(C_s8) + cv2(C_s16) upsampled x2 + cv3(global average of C_s16) broadcast over the map.
    Each term is a 1x1 conv + BN + ReLU to `out_channels`.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.cv1 = ConvBNReLU(in_channels[0], out_channels, 1)
        self.cv2 = ConvBNReLU(in_channels[1], out_channels, 1, upsample=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.cv3 = ConvBNReLU(in_channels[1], out_channels, 1)

    def forward(self, features: List[Tensor]) -> Tensor:
        s8, s16 = features
        return self.cv1(s8) + self.cv2(s16) + self.cv3(self.gap(s16))


class PAFPNNeck(nn.Module):
    """
    P_k from `pyramid_ext` over the CEM output; FPN top-down (`lateral_convs` 1x1, add, `fpn_convs` 3x3) gives
    F_k; bottom-up, F_{k+1} += downsample_convs[k](F_k) (3x3 stride 2, using the already updated F_k);
    output k = pafpn_convs[k](F_k) (3x3).
    """

    def __init__(self, in_channels: Sequence[int], num_levels: int, out_channels: int = 128):
        super().__init__()
        self.num_levels = num_levels
        self.out_channels = out_channels
        self.ft_module = ContextEnhancement(in_channels, out_channels)
        self.pyramid_ext = pyramid_extractor(out_channels, out_channels, num_levels)
        self.lateral_convs = conv_list(out_channels, num_levels, kernel_size=1)
        self.fpn_convs = conv_list(out_channels, num_levels, kernel_size=3)
        self.downsample_convs = conv_list(out_channels, num_levels - 1, kernel_size=3, stride=2)
        self.pafpn_convs = conv_list(out_channels, num_levels, kernel_size=3)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        x = self.ft_module(features)
        levels = []
        for conv in self.pyramid_ext:
            x = conv(x)
            levels.append(x)
        laterals = top_down([conv(x) for conv, x in zip(self.lateral_convs, levels)])
        levels = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for i, down in enumerate(self.downsample_convs):
            levels[i + 1] = levels[i + 1] + down(levels[i])
        return [conv(x) for conv, x in zip(self.pafpn_convs, levels)]


@NECK_REGISTRY.register()
def PAFPN(in_channels, num_levels, out_channels):
    return PAFPNNeck(in_channels, num_levels, out_channels)
