"""Backbones of the authors' detector, registered in detectron2's BACKBONE_REGISTRY.

Each returns two maps, {"s8": stride 8, "s16": stride 16}; those of the 2023 network (the authors' code at
108b4a8: CSPDarknet, ResNet2023, RepVGG2023, ShuffleNetV2_2023) {"s16": stride 16, "s32": stride 32}. Module names
equal the authors' (and, for the ImageNet parts, torchvision's, RepVGG's or YOLOX's official ones), so both kinds
of checkpoints load by name.
"""
import os
from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from mutual_guide.checkpoint.state_dict import check_state_dict_fits, unwrap_state_dict

__all__ = ["TwoMapBackbone", "load_pretrained_backbone"]


class TwoMapBackbone(Backbone):
    """
    Base of the backbones: `forward(x)` returns {"s8": ..., "s16": ...} (or the `strides` given) from `features(x)`.

    Subclasses define `features(x) -> (s8, s16)`, `stages()` (the units `freeze` counts), `imagenet_to_ours(sd)`
    (rename an ImageNet classifier's state dict to ours, dropping its classifier) and `torchvision_state_dict()`.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int] = (8, 16)):
        super().__init__()
        self._out_features = [f"s{s}" for s in strides]
        self._out_feature_channels = dict(zip(self._out_features, channels))
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._freeze_at = 0

    def features(self, x: Tensor):
        raise NotImplementedError

    def stages(self) -> List[List[nn.Module]]:
        """The modules of the stem, then of each stage, in the order of the forward pass."""
        raise NotImplementedError

    def freeze(self, freeze_at: int = 0) -> "TwoMapBackbone":
        """
        MODEL.BACKBONE.FREEZE_AT, as detectron2's ResNet reads it: 0 freezes nothing, 1 the stem, k the stem and
        the first k - 1 stages (`stages()`). A frozen stage's parameters get no gradient (requires_grad False, so
        that detectron2's optimizer leaves them out) and its BatchNorms stay in eval mode whatever `train()` says:
        they normalise with their running statistics and never update them.

        Not detectron2's FrozenBatchNorm2d, which computes the same but has no `num_batches_tracked`: a checkpoint
        of the same network trained unfrozen (the detector a small fine-tune starts from, the ImageNet weights)
        would no longer fit exactly, and the checkpointer loads whole detectors strictly. Kept as BatchNorm2d, the
        frozen network has the state dict of the unfrozen one, and BN folding (fusion.py) is unchanged.
        """
        units = self.stages()
        if not isinstance(freeze_at, int) or not 0 <= freeze_at <= len(units):
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT must be 0 (nothing frozen) to {len(units)} ({type(self).__name__}: the "
                f"stem and {len(units) - 1} stages), got {freeze_at!r}"
            )
        self._freeze_at = freeze_at
        for module in self._frozen_modules():
            for param in module.parameters():
                param.requires_grad_(False)
        return self.train(self.training)

    def _frozen_modules(self) -> List[nn.Module]:
        # looked up at each call: SyncBatchNorm conversion replaces BatchNorms inside the stages after `freeze`
        return [module for unit in self.stages()[: self._freeze_at] for module in unit]

    def train(self, mode: bool = True) -> "TwoMapBackbone":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return dict(zip(self._out_features, self.features(x)))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @staticmethod
    def imagenet_to_ours(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return sd

    def torchvision_state_dict(self) -> Dict[str, Tensor]:
        raise ValueError(f"{type(self).__name__} has no torchvision ImageNet weights; give a local file instead")


def check_input_shape(input_shape: ShapeSpec, name: str):
    if input_shape.channels not in (None, 3):
        raise ValueError(f"{name} takes 3-channel images, got {input_shape.channels} channels")


def load_pretrained_backbone(backbone: TwoMapBackbone, name: str, spec: str) -> None:
    """
    ImageNet initialisation of `backbone` (in place), as MODEL.BACKBONE.PRETRAINED says:
    "" -> nothing; "torchvision" -> torchvision's published weights through torchvision's own downloader
    (needs network access or torchvision's cache); anything else -> path of a local file holding a
    torchvision-style (RepVGG: official-style) classifier state dict. The classifier is dropped; any other
    key that is missing, unexpected or of the wrong shape is a CheckpointMismatchError naming the file and the keys.
    """
    if not spec:
        return
    if spec == "torchvision":
        source = f"torchvision's {name} ImageNet weights"
        try:
            sd = backbone.torchvision_state_dict()
        except ValueError:  # the backbone has no such weights (RepVGG): the message already says so
            raise
        except Exception as e:  # network errors come in many types
            raise RuntimeError(
                f"Could not fetch {source} ({e}). Without network access, download the file elsewhere and set "
                "MODEL.BACKBONE.PRETRAINED to its local path."
            ) from e
    else:
        source = repr(spec)
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"MODEL.BACKBONE.PRETRAINED file {spec!r} does not exist")
        sd = unwrap_state_dict(torch.load(spec, map_location="cpu", weights_only=True))
    sd = backbone.imagenet_to_ours(sd)
    check_state_dict_fits(backbone.state_dict(), sd, f"Pretrained weights {source} do not fit backbone {name}")
    backbone.load_state_dict(sd, strict=False)  # torchvision's files may lack num_batches_tracked


# register the backbones
from mutual_guide.modeling.backbone import cspdarknet, repvgg, resnet, shufflenet, vgg  # noqa: E402,F401
