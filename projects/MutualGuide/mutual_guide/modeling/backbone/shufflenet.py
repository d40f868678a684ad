"""ShuffleNetV2 1.0x without the stem max-pool: stage3 at stride 8, stage4 at stride 16."""
from typing import Dict

import torch
from torch import Tensor, nn
from torchvision.models.shufflenetv2 import InvertedResidual

from detectron2.modeling import BACKBONE_REGISTRY

from mutual_guide.modeling.backbone import TwoMapBackbone, check_input_shape
from mutual_guide.modeling.depthwise import StridedDepthwiseConv2d

__all__ = ["SHUFFLENET_VERSIONS", "ShuffleNetV2Backbone", "channel_shuffle", "concat_shuffle"]

_REPEATS = (4, 8, 4)
_CHANNELS = (24, 116, 232, 464)
# MODEL.BACKBONE.VERSION of the 2023 network -> stage widths (torchvision's x1_0 and x1_5)
SHUFFLENET_VERSIONS = {"1.0x": _CHANNELS, "1.5x": (24, 176, 352, 704)}


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """
    torchvision's channel shuffle (channel j * groups + i of the output is channel i * (C / groups) + j of the
    input), in the memory layout of `x`. torchvision's always returns an NCHW tensor; in a network that runs in
    NHWC (MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES) every unit then converted back and forth, in the forward and
    the backward pass.
    """
    n, c, h, w = x.shape
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
    return nhwc.permute(0, 3, 1, 2)


class _InterleaveNHWC(torch.autograd.Function):
    """
    `concat_shuffle` of two NHWC tensors: each written once, into every other channel of the output; the backward
    pass reads every other channel of the gradient back. Two strided copies each way, where the concatenation and
    the shuffle make two full copies each way, bfloat16's much slower than float32's (3x at 58 channels, 80 x 80).
    """

    @staticmethod
    def forward(ctx, first: Tensor, second: Tensor) -> Tensor:
        n, c, h, w = first.shape
        out = torch.empty((n, h, w, c, 2), dtype=first.dtype, device=first.device)
        out[..., 0].copy_(first.permute(0, 2, 3, 1))
        out[..., 1].copy_(second.permute(0, 2, 3, 1))
        return out.view(n, h, w, 2 * c).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        n, c2, h, w = grad.shape
        pairs = grad.permute(0, 2, 3, 1).reshape(n, h, w, c2 // 2, 2)
        return pairs[..., 0].contiguous().permute(0, 3, 1, 2), pairs[..., 1].contiguous().permute(0, 3, 1, 2)


def concat_shuffle(first: Tensor, second: Tensor) -> Tensor:
    """
    `channel_shuffle(torch.cat((first, second), 1), 2)` with one copy instead of two: channel 2j of the output is
    channel j of `first`, channel 2j + 1 channel j of `second`; the same values and layout. While a model is
    traced for export, the two plain operators (what ONNX and TorchScript know).
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return channel_shuffle(torch.cat((first, second), dim=1), 2)
    n, c, h, w = first.shape
    if first.stride(1) != 1 or h * w == 1:  # NCHW (channels outermost after the batch); the stride-2 unit's too
        return torch.stack((first, second), dim=2).view(n, 2 * c, h, w)
    return _InterleaveNHWC.apply(first, second)  # NHWC, `first` possibly half of a tensor (x.chunk)


class _InvertedResidual(InvertedResidual):
    """
    torchvision's unit (same modules, same state dict keys), its concatenation and shuffle in one copy, its strided
    depthwise convolutions `StridedDepthwiseConv2d` (fast bfloat16 training on the CPU).
    """

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__(inp, oup, stride)
        for branch in (self.branch1, self.branch2):
            for i, layer in enumerate(branch):
                if isinstance(layer, nn.Conv2d):
                    branch[i] = StridedDepthwiseConv2d.like(layer)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            return concat_shuffle(x1, self.branch2(x2))
        return concat_shuffle(self.branch1(x), self.branch2(x))


class ShuffleNetV2Backbone(TwoMapBackbone):
    """
    torchvision's shufflenet_v2_x1_0 names (`conv1`, `stage2`..`stage4` of torchvision InvertedResidual units)
    without the max-pool, `conv5` and the classifier: stage3 (232 channels) at stride 8, stage4 (464) at 16.
    """

    def __init__(self, version: str = "1.0x", max_pool: bool = False):
        if version not in SHUFFLENET_VERSIONS:
            raise ValueError(f"ShuffleNetV2 version must be one of {sorted(SHUFFLENET_VERSIONS)}, got {version!r}")
        channels = SHUFFLENET_VERSIONS[version]
        super().__init__((channels[2], channels[3]), strides=(16, 32) if max_pool else (8, 16))
        self.version = version
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        # the 2023 network keeps torchvision's stem max-pool: stage3 at stride 16, stage4 at 32
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if max_pool else None
        in_channels = channels[0]
        for name, repeats, out_channels in zip(("stage2", "stage3", "stage4"), _REPEATS, channels[1:]):
            units = [_InvertedResidual(in_channels, out_channels, 2)]
            units += [_InvertedResidual(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            in_channels = out_channels

    def features(self, x: Tensor):
        x = self.conv1(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.stage2(x)
        s8 = self.stage3(x)
        return s8, self.stage4(s8)

    def stages(self):
        """The stem (conv1), then stage2..stage4 (torchvision's names, numbered as detectron2's res2..res4)."""
        return [[self.conv1], [self.stage2], [self.stage3], [self.stage4]]

    @staticmethod
    def imagenet_to_ours(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """torchvision's keys are ours; `conv5.*` and the classifier `fc.*` are dropped."""
        return {k: v for k, v in sd.items() if not k.startswith(("conv5.", "fc."))}

    def torchvision_state_dict(self):
        from torchvision.models import ShuffleNet_V2_X1_0_Weights, ShuffleNet_V2_X1_5_Weights

        weights = {"1.0x": ShuffleNet_V2_X1_0_Weights, "1.5x": ShuffleNet_V2_X1_5_Weights}[self.version]
        return weights.IMAGENET1K_V1.get_state_dict(progress=False)


@BACKBONE_REGISTRY.register()
def ShuffleNetV2(cfg, input_shape):
    """Registered as "ShuffleNetV2": ShuffleNetV2 1.0x without max-pool, 232 / 464 channels at strides 8 / 16."""
    check_input_shape(input_shape, "ShuffleNetV2")
    return ShuffleNetV2Backbone().freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def ShuffleNetV2_2023(cfg, input_shape):
    """Registered as "ShuffleNetV2_2023" (2023 network): ShuffleNetV2 with its max-pool, MODEL.BACKBONE.VERSION
    "1.0x" (232 / 464 channels) or "1.5x" (352 / 704) at strides 16 / 32."""
    check_input_shape(input_shape, "ShuffleNetV2_2023")
    return ShuffleNetV2Backbone(cfg.MODEL.BACKBONE.VERSION, max_pool=True).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
