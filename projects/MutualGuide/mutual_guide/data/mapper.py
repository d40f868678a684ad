"""Dataset dict -> model input: read, augment (train) or resize (test) to S x S, and build the Instances."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode, Boxes, Instances
from detectron2.utils.logger import log_every_n_seconds

from .augmentation import DetectionAugInput, build_augmentation, min_side_keep, plain_resize

__all__ = ["MutualGuideDatasetMapper", "read_image_checked", "annotations_to_boxes"]

logger = logging.getLogger(__name__)


def read_image_checked(file_name, image_format):
    """detection_utils.read_image, with an error that names the file when it is missing or unreadable."""
    try:
        return utils.read_image(file_name, format=image_format)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Image file not found: {file_name}") from e
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
        raise OSError(f"Cannot read image file {file_name}: {type(e).__name__}: {e}") from e


def annotations_to_boxes(annotations, image_size):
    """
    XYXY_ABS boxes (N x 4 float32) and class ids (N int64) of the non-crowd annotations, clipped to the image;
    boxes left empty by clipping are dropped. Returns (boxes, classes, number dropped).
    """
    annotations = [a for a in annotations if a.get("iscrowd", 0) == 0]
    boxes = np.array(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=np.float32
    ).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    h, w = image_size
    boxes = np.clip(boxes, 0, [w, h, w, h])
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[nonempty], classes[nonempty], int((~nonempty).sum())


class MutualGuideDatasetMapper:
    """
    Callable like detectron2's DatasetMapper. Output dict: "image" (uint8 tensor 3 x S x S in INPUT.FORMAT),
    "height"/"width" of the original image, the input's other fields ("file_name", "image_id", ...), and at
    train time "instances" with `gt_boxes` (XYXY, pixels of the S x S image) and `gt_classes` (from 0).

    Train time: the paper's augmentation (INPUT.MG_AUGMENT) or a plain resize; boxes outside the image are
    clipped, empty ones dropped (counted in `self.num_dropped_empty` and logged), boxes whose shorter side
    ends under MIN_BOX_SIDE_RATIO of the image are dropped. If augmentation loses every object of an image
    that had some, the image is used resized only, as in the paper's code. Images without objects give
    empty Instances. Test time: resize only, annotations removed.
    """

    @configurable
    def __init__(self, is_train, *, augmentations, image_format, min_box_side_ratio, size):
        self.is_train = is_train
        self.augmentations = augmentations
        self.resize_only = plain_resize(size)
        self.image_format = image_format
        self.min_box_side_ratio = min_box_side_ratio
        self.num_dropped_empty = 0
        logger.info(f"[MutualGuideDatasetMapper] augmentations ({'train' if is_train else 'test'}): {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "min_box_side_ratio": cfg.INPUT.MIN_BOX_SIDE_RATIO,
            "size": cfg.INPUT.SIZE,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        annotations = dataset_dict.pop("annotations", None)

        if not self.is_train:
            aug_input = DetectionAugInput(image, boxes=np.zeros((0, 4), dtype=np.float32))
            self.resize_only(aug_input)
            dataset_dict["image"] = _to_tensor(aug_input.image)
            return dataset_dict

        boxes, classes, dropped = annotations_to_boxes(annotations or [], image.shape[:2])
        if dropped:
            self.num_dropped_empty += dropped
            log_every_n_seconds(
                logging.WARNING,
                f"Dropped {dropped} empty box(es) of {dataset_dict['file_name']} "
                f"({self.num_dropped_empty} since start)",
                n=60,
                name=__name__,
            )

        aug_input = self._augment(image, boxes, self.augmentations)
        if len(boxes) and not len(aug_input.boxes):
            aug_input = self._augment(image, boxes, [self.resize_only])

        instances = Instances(aug_input.image.shape[:2])
        instances.gt_boxes = Boxes(torch.as_tensor(aug_input.boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.as_tensor(classes[aug_input.kept], dtype=torch.int64)
        dataset_dict["image"] = _to_tensor(aug_input.image)
        dataset_dict["instances"] = instances
        return dataset_dict

    def _augment(self, image, boxes, augmentations):
        """Run `augmentations`, then drop the boxes under the minimum side; returns the DetectionAugInput."""
        aug_input = DetectionAugInput(image, boxes=boxes)
        T.AugmentationList(augmentations)(aug_input)
        keep = min_side_keep(aug_input.boxes, aug_input.image.shape[:2], self.min_box_side_ratio)
        aug_input.boxes, aug_input.kept = aug_input.boxes[keep], aug_input.kept[keep]
        return aug_input


def _to_tensor(image):
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
