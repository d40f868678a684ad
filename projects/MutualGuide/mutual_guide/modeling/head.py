"""
The detection heads, per pyramid level and not shared. 2020 network: one 3x3 conv for boxes and one for classes.
2023 network (the authors' code at 108b4a8, `multibox`): a 3x3 conv unit then a 1x1 conv, for each of the two.
"""
import math
from typing import List, Tuple

from torch import Tensor, nn

from mutual_guide.modeling.conv_blocks import CONV_BLOCKS

__all__ = ["MutualGuideHead", "MutualGuideHead2023"]


class MutualGuideHead(nn.Module):
    """
    `loc[k]`: 3x3 conv to num_anchors * 4 box deltas; `conf[k]`: 3x3 conv to num_anchors * num_classes logits.
    Channel anchor * K + c holds value c of anchor `anchor`, the layout of detectron2's `permute_to_N_HWA_K`
    and of the authors' `view(N, -1, C)`. Weights N(0, 0.01); box biases 0; class biases -log(99) so every
    sigmoid starts at the prior 0.01 (RetinaNet's initialisation, as the authors').
    """

    def __init__(self, in_channels: int, num_levels: int, num_classes: int, num_anchors: int = 6):
        super().__init__()
        self.loc = nn.ModuleList(
            nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1) for _ in range(num_levels)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1) for _ in range(num_levels)
        )
        for conv in self.loc:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, 0.0)
        self.reset_class_logits()

    def reset_class_logits(self, prior: float = 0.01):
        """The class layers' initialisation, also where fine-tuning on new classes starts them."""
        for conv in self.conf:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, -math.log((1 - prior) / prior))

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """features: one [N, in_channels, H_k, W_k] map per level -> (logits [N, A*C, H, W], deltas [N, A*4, H, W])."""
        if len(features) != len(self.loc):
            raise ValueError(f"The head has {len(self.loc)} levels, got {len(features)} feature maps")
        logits = [conv(x) for conv, x in zip(self.conf, features)]
        deltas = [conv(x) for conv, x in zip(self.loc, features)]
        return logits, deltas


class MutualGuideHead2023(MutualGuideHead):
    """
    `loc[k]`: nn.Sequential(conv unit 3x3 C -> C, 1x1 conv to num_anchors * 4); `conf[k]`: the same to
    num_anchors * num_classes. The unit is MODEL.NECK.CONV_BLOCK's (BasicConv, or DepthwiseConv whose 3x3 is a
    5x5 depthwise conv). Output layout and initialisation of the 1x1 convs are those of `MutualGuideHead`.

    The authors' detector also builds a third branch `dist[k]` of the same shape (C outputs), used only by their
    distillation script; it is not built here (their checkpoints' `dist.*` tensors are dropped on load).
    """

    def __init__(
        self, in_channels: int, num_levels: int, num_classes: int, num_anchors: int = 6, conv_block: str = "basic"
    ):
        nn.Module.__init__(self)
        if conv_block not in CONV_BLOCKS:
            raise ValueError(f"MODEL.NECK.CONV_BLOCK must be one of {sorted(CONV_BLOCKS)}, got {conv_block!r}")
        block = CONV_BLOCKS[conv_block]

        def branch(outputs):
            return nn.Sequential(block(in_channels, in_channels, 3, padding=1), nn.Conv2d(in_channels, outputs, 1))

        self.loc = nn.ModuleList(branch(num_anchors * 4) for _ in range(num_levels))
        self.conf = nn.ModuleList(branch(num_anchors * num_classes) for _ in range(num_levels))
        for seq in self.loc:
            nn.init.normal_(seq[-1].weight, std=0.01)
            nn.init.constant_(seq[-1].bias, 0.0)
        self.reset_class_logits()

    def reset_class_logits(self, prior: float = 0.01):
        """The last (1x1) class layers afresh; the conv units before them keep their weights."""
        for seq in self.conf:
            nn.init.normal_(seq[-1].weight, std=0.01)
            nn.init.constant_(seq[-1].bias, -math.log((1 - prior) / prior))
