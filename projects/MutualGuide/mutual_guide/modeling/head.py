"""The detection head: one 3x3 conv for boxes and one for classes on each pyramid level, not shared."""
import math
from typing import List, Tuple

from torch import Tensor, nn

__all__ = ["MutualGuideHead"]


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
