"""
Strided depthwise convolutions in bfloat16 training on the CPU.

The input gradient of a 3x3 depthwise convolution with stride 2 is 2.5x to 65x slower in bfloat16 than in float32
on the CPU (PyTorch 2.14, AVX512-BF16; batch 8, NHWC: 39 against 16 ms at 58 x 160 x 160, 24 against 1.0 ms at
116 x 80 x 80, 17 against 0.26 ms at 232 x 40 x 40), while its forward pass and weight gradient are fast in
bfloat16. ShuffleNetV2 has two such convolutions in the first unit of every stage: they took about a fifth of its
bfloat16 training step. `StridedDepthwiseConv2d` keeps the forward pass and the
weight gradient in bfloat16 and computes the input gradient in float32, then rounds it to bfloat16: what autocast
would have given, computed faster and with less rounding. Everywhere else (float32, GPUs, inference, tracing for
export) it is nn.Conv2d. `benchmarks/bench_precision_layout.py` times the whole networks.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StridedDepthwiseConv2d"]


class _BFloat16DepthwiseConv(torch.autograd.Function):
    """conv2d of bfloat16 `x` and `weight`; the input gradient computed in float32 (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride, padding, dilation, groups) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grad_input = grad_weight = None
        geometry = (None, list(stride), list(padding), list(dilation), False, [0, 0], groups)
        if ctx.needs_input_grad[0]:
            # only the input's shape and layout matter here: an uninitialised float32 tensor like it
            grad_input = torch.ops.aten.convolution_backward(
                grad.float(), torch.empty_like(x, dtype=torch.float32), weight.float(), *geometry, [True, False, False]
            )[0].to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(grad, x, weight, *geometry, [False, True, False])[1]
        return grad_input, grad_weight, None, None, None, None


class StridedDepthwiseConv2d(nn.Conv2d):
    """
    nn.Conv2d (same parameters, state dict and fusion) for a depthwise convolution with stride > 1 and no bias,
    whose input gradient is computed in float32 when it trains in bfloat16 on the CPU.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None and x.device.type == "cpu" and torch.is_grad_enabled() and not torch.jit.is_tracing():
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            if dtype == torch.bfloat16:
                return _BFloat16DepthwiseConv.apply(
                    x.to(dtype), self.weight.to(dtype), self.stride, self.padding, self.dilation, self.groups
                )
        return super().forward(x)

    @classmethod
    def like(cls, conv: nn.Conv2d) -> nn.Module:
        """`conv` itself unless it is depthwise, strided and without bias; then this class with its parameters."""
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        if type(conv) is not nn.Conv2d or not depthwise or max(conv.stride) == 1 or conv.bias is not None:
            return conv
        # uninitialised (no draw from the random stream: a seeded model is built as with nn.Conv2d), then conv's weight
        new = torch.nn.utils.skip_init(cls, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                       conv.padding, conv.dilation, conv.groups, bias=False,
                                       padding_mode=conv.padding_mode, device=conv.weight.device)
        new.weight = conv.weight
        return new
