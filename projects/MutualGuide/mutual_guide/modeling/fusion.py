"""Inference-time rewrites that keep a trained network's outputs: RepVGG re-parameterisation, BN folding."""
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import Conv2d, FrozenBatchNorm2d

from mutual_guide.modeling.backbone.repvgg import RepVGGBlock

__all__ = ["fold_batchnorm", "fold_conv_norms", "fuse_repvgg_blocks"]


def fuse_repvgg_blocks(model: nn.Module) -> nn.Module:
    """Every RepVGG block of `model` to its deploy form (one 3x3 conv with bias), in place; use in eval mode."""
    for module in model.modules():
        if isinstance(module, RepVGGBlock):
            module.switch_to_deploy()
    return model


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """conv <- bn(conv(.)) with bn's running statistics (torch's own fusion arithmetic)."""
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )


def _foldable(conv, bn) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, _BatchNorm)
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """
    Fold every eval-mode BatchNorm that directly follows a conv into that conv and replace it by nn.Identity,
    in place. "Directly follows" is read from the structure, never guessed from the forward pass:
    consecutive children of an nn.Sequential (VGG, ShuffleNet, downsample and RepVGG branches), or attribute
    pairs `conv<s>` / `bn<s>` of one module (the necks' ConvBNReLU, torchvision's BasicBlock, ResNet's stem).
    BatchNorms in training mode or without a preceding conv (RepVGG's identity branch) are left alone.
    """
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, conv), (bn_name, bn) in zip(children, children[1:]):
                if _foldable(conv, bn):
                    _fold(conv, bn)
                    setattr(module, bn_name, nn.Identity())
            continue
        for name, child in list(module.named_children()):
            if not name.startswith("bn"):
                continue
            conv = getattr(module, "conv" + name[2:], None)
            if _foldable(conv, child):
                _fold(conv, child)
                setattr(module, name, nn.Identity())
    return model


@torch.no_grad()
def fold_conv_norms(model: nn.Module) -> nn.Module:
    """
    Fold the `norm` of every detectron2 `Conv2d` (FrozenBatchNorm2d, or a BatchNorm in eval mode) into its
    weights and drop it, in place: detectron2's ResNet and FPN apply the norm inside the conv's forward.
    """
    for module in model.modules():
        if not isinstance(module, Conv2d) or module.norm is None:
            continue
        norm = module.norm
        if isinstance(norm, FrozenBatchNorm2d) or _foldable(module, norm):
            module.weight, module.bias = fuse_conv_bn_weights(
                module.weight, module.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            module.norm = None
    return model
