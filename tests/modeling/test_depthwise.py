"""StridedDepthwiseConv2d: nn.Conv2d everywhere, but its bfloat16 input gradient on the CPU comes from float32."""
import pytest
import torch
from torch import nn

from mutual_guide.modeling.depthwise import StridedDepthwiseConv2d


@pytest.mark.parametrize("kernel, padding", [(3, 1), (5, 2)])
def test_bfloat16_training_gives_autocasts_results(kernel, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, kernel, 2, padding, groups=16, bias=False)
    strided = StridedDepthwiseConv2d.like(conv)
    x = torch.randn(2, 16, 20, 20).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(2, 16, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, ours = conv(x), strided(x)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, plain)
    plain_grads = torch.autograd.grad(plain, (x, conv.weight), grad.bfloat16())
    our_grads = torch.autograd.grad(ours, (x, strided.weight), grad.bfloat16())
    assert torch.equal(our_grads[1], plain_grads[1])  # the weight gradient: the same bfloat16 kernel
    # the input gradient: float32 arithmetic rounded to bfloat16, at least as close to float64's as autocast's
    exact = torch.nn.grad.conv2d_input(x.shape, conv.weight.double(), grad.double(), 2, padding, 1, 16)
    assert (our_grads[0].double() - exact).abs().max() <= (plain_grads[0].double() - exact).abs().max() + 1e-6
    assert our_grads[0].dtype == torch.float32 and our_grads[0].is_contiguous(memory_format=torch.channels_last)


def test_float32_and_inference_are_nn_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False)
    strided = StridedDepthwiseConv2d.like(conv)
    x = torch.randn(1, 8, 9, 9, requires_grad=True)
    assert torch.equal(strided(x), conv(x))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(strided(x), conv(x))
    traced = torch.jit.trace(strided, x.detach())
    assert "_BFloat16DepthwiseConv" not in str(traced.graph)


def test_like_replaces_only_strided_depthwise_convs_and_draws_no_random_numbers():
    torch.manual_seed(0)
    depthwise = nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False)
    for other in (nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.Conv2d(8, 16, 3, 2, 1, bias=False),
                  nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=True)):
        assert StridedDepthwiseConv2d.like(other) is other
    state = torch.random.get_rng_state()
    strided = StridedDepthwiseConv2d.like(depthwise)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert type(strided) is StridedDepthwiseConv2d and strided.weight is depthwise.weight
    assert strided.state_dict().keys() == depthwise.state_dict().keys()


def test_shufflenet_units_use_it_where_they_stride(make_cfg):
    from detectron2.modeling import build_model

    model = build_model(make_cfg("ShuffleNetV2", "FPN", 128, num_classes=3))
    strided = [m for m in model.backbone.modules() if isinstance(m, StridedDepthwiseConv2d)]
    assert len(strided) == 6  # branch1 and branch2 of the first unit of each of the three stages
    assert all(m.stride == (2, 2) for m in strided)
