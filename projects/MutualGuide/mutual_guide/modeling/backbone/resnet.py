"""ResNet-18 without the stem max-pool: layer3 at stride 8, layer4 at stride 16."""
from typing import Dict

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from detectron2.modeling import BACKBONE_REGISTRY

from mutual_guide.modeling.backbone import TwoMapBackbone, check_input_shape

__all__ = ["ResNet18Backbone"]


class ResNet18Backbone(TwoMapBackbone):
    """
    torchvision's ResNet-18 names (`conv1`, `bn1`, `layer1`..`layer4` of torchvision BasicBlocks), without the
    max-pool and the classifier, so layer3 (256 channels) is at stride 8 and layer4 (512) at stride 16.
    """

    def __init__(self, max_pool: bool = False):
        super().__init__((256, 512), strides=(16, 32) if max_pool else (8, 16))
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # the 2023 network keeps torchvision's stem max-pool: layer3 at stride 16, layer4 at 32
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if max_pool else None
        self.layer1 = self._make_layer(64, 64, stride=1)
        self.layer2 = self._make_layer(64, 128, stride=2)
        self.layer3 = self._make_layer(128, 256, stride=2)
        self.layer4 = self._make_layer(256, 512, stride=2)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, stride: int, blocks: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_planes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(in_planes, planes, stride, downsample)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features(self, x: Tensor):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer2(self.layer1(x))
        s8 = self.layer3(x)
        return s8, self.layer4(s8)

    def stages(self):
        """The stem (conv1, bn1), then layer1..layer4 (detectron2's res2..res5)."""
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    @staticmethod
    def imagenet_to_ours(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """torchvision's keys are ours; only the classifier `fc.*` is dropped."""
        return {k: v for k, v in sd.items() if not k.startswith("fc.")}

    def torchvision_state_dict(self):
        from torchvision.models import ResNet18_Weights

        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


@BACKBONE_REGISTRY.register()
def ResNet18(cfg, input_shape):
    """Registered as "ResNet18": ResNet-18 without max-pool, maps of 256 / 512 channels at strides 8 / 16."""
    check_input_shape(input_shape, "ResNet18")
    return ResNet18Backbone().freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def ResNet2023(cfg, input_shape):
    """Registered as "ResNet2023" (2023 network): ResNet-18 with its max-pool, 256 / 512 channels at strides
    16 / 32 (one variant: MODEL.BACKBONE.VERSION "")."""
    check_input_shape(input_shape, "ResNet2023")
    if cfg.MODEL.BACKBONE.VERSION != "":
        raise ValueError(f"MODEL.BACKBONE.VERSION of ResNet2023 must be \"\", got {cfg.MODEL.BACKBONE.VERSION!r}")
    return ResNet18Backbone(max_pool=True).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
