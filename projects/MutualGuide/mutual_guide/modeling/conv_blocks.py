"""The conv units of the 2023 network (the authors' code at 108b4a8): conv + BN + SiLU, and its depthwise form.

Shared by the 2023 necks and head. Attribute names (`conv`, `bn`, `act`; `dconv`, `pconv`) are the authors', so
their checkpoints load by name, and `fusion.fold_batchnorm` finds each `conv` / `bn` pair.
"""
from torch import Tensor, nn

from mutual_guide.modeling.depthwise import StridedDepthwiseConv2d

__all__ = ["BasicConv", "DepthwiseConv", "CONV_BLOCKS"]


class BasicConv(nn.Module):
    """conv (no bias) -> BatchNorm (torch's defaults) -> SiLU (optional); "same" padding is the caller's."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
        groups: int = 1, act: bool = True,
    ):
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.conv = StridedDepthwiseConv2d.like(conv)  # itself unless depthwise and strided
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class DepthwiseConv(nn.Module):
    """
    The light unit of the ShuffleNet rows: a depthwise 5x5 conv + BN (`dconv`, no activation) then a pointwise
    `BasicConv` (`pconv`). Whatever kernel the caller asks for above 1 becomes 5x5 with padding 2, as in the
    authors' code; a 1x1 request is the pointwise conv alone.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
        act: bool = True,
    ):
        super().__init__()
        self.dconv = None
        if kernel_size != 1:
            self.dconv = BasicConv(in_channels, in_channels, 5, stride, 2, groups=in_channels, act=False)
        self.pconv = BasicConv(in_channels, out_channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        if self.dconv is not None:
            x = self.dconv(x)
        return self.pconv(x)


# MODEL.NECK.CONV_BLOCK -> unit of the 2023 neck and head
CONV_BLOCKS = {"basic": BasicConv, "depthwise": DepthwiseConv}
