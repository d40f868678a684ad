"""VGG-16 with BatchNorm, split after conv4_3 (stride 8) and ending at conv5_3 (stride 16)."""
from typing import Dict

from torch import Tensor, nn

from detectron2.modeling import BACKBONE_REGISTRY

from mutual_guide.modeling.backbone import TwoMapBackbone, check_input_shape

__all__ = ["VGG16Backbone"]

# torchvision's vgg16_bn `features` layers: a number is conv3x3 + BN + ReLU to that width, "M" a 2x2 max-pool.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# features[:33] ends after conv4_3's ReLU (three pools: stride 8); the rest is pool4 and conv5_x (stride 16).
_SPLIT = 33


class VGG16Backbone(TwoMapBackbone):
    """`layer1` = torchvision vgg16_bn.features[0:33], `layer2` = features[33:43] (the authors' split)."""

    def __init__(self):
        super().__init__((512, 512))
        layers, in_channels = [], 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_channels = v
        self.layer1 = nn.Sequential(*layers[:_SPLIT])
        self.layer2 = nn.Sequential(*layers[_SPLIT:])

    def features(self, x: Tensor):
        s8 = self.layer1(x)
        return s8, self.layer2(s8)

    def stages(self):
        """conv1_x (the stem), conv2_x, conv3_x, conv4_x, each with the max-pool after it, and conv5_x."""
        layers, units = list(self.layer1) + list(self.layer2), [[]]
        for layer in layers:
            units[-1].append(layer)
            if isinstance(layer, nn.MaxPool2d):
                units.append([])
        return units

    @staticmethod
    def imagenet_to_ours(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """torchvision `features.<i>.*` -> `layer1.<i>.*` (i < 33) or `layer2.<i-33>.*`; the classifier is dropped."""
        out = {}
        for key, value in sd.items():
            if not key.startswith("features."):
                if not key.startswith("classifier."):
                    out[key] = value  # reported as unexpected
                continue
            index, rest = key[len("features."):].split(".", 1)
            index = int(index)
            name = f"layer1.{index}" if index < _SPLIT else f"layer2.{index - _SPLIT}"
            out[f"{name}.{rest}"] = value
        return out

    def torchvision_state_dict(self):
        from torchvision.models import VGG16_BN_Weights

        return VGG16_BN_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


@BACKBONE_REGISTRY.register()
def VGG16(cfg, input_shape):
    """Registered as "VGG16": VGG-16-BN, maps of 512 channels at strides 8 and 16."""
    check_input_shape(input_shape, "VGG16")
    return VGG16Backbone().freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
