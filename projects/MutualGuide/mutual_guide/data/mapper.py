"""Dataset dict -> model input: read, augment (train) or resize (test) to S x S, and build the Instances."""
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.logger import log_every_n_seconds
from detectron2.utils.registry import Registry

from mutual_guide.data.augmentation import (
    DetectionAugInput,
    RandomInterpolationResize,
    build_augmentation,
    min_side_keep,
    plain_resize,
)
from mutual_guide.data.image_io import read_image
from mutual_guide.data.resize import resize_to_input

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "MutualGuideDatasetMapper",
    "annotations_to_boxes",
    "build_dataset_mapper",
    "build_test_transform",
    "read_image_checked",
]

logger = logging.getLogger(__name__)

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """Dataset mappers, by INPUT.DATASET_MAPPER: called as `Mapper(cfg, is_train=...)`."""
DATASET_MAPPER_REGISTRY.register(DatasetMapper)  # detectron2's, for its own detectors


def read_image_checked(file_name, image_format):
    """image_io.read_image (the project's one decoder), with an error that names the file when it is missing or
    unreadable."""
    try:
        return read_image(file_name, format=image_format)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Image file not found: {file_name}") from e
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError...); ours ValueError
        raise OSError(f"Cannot read image file {file_name}: {type(e).__name__}: {e}") from e


def annotations_to_boxes(annotations, image_size, crowd_boxes=False):
    """
    XYXY_ABS boxes (N x 4 float32) and class ids (N int64) of the annotations (crowd ones only with
    `crowd_boxes`), clipped to the image; boxes left empty by clipping are dropped.
    Returns (boxes, classes, number dropped).
    """
    annotations = [a for a in annotations if crowd_boxes or a.get("iscrowd", 0) == 0]
    modes = {a["bbox_mode"] for a in annotations}
    if len(modes) == 1 and modes <= {BoxMode.XYXY_ABS, BoxMode.XYWH_ABS}:
        # one conversion for all: float32 as BoxMode.convert computes a single box given as a list
        boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes = BoxMode.convert(boxes, modes.pop(), BoxMode.XYXY_ABS)
    else:
        boxes = np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=np.float32
        ).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    h, w = image_size
    boxes = np.clip(boxes, 0, [w, h, w, h])
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[nonempty], classes[nonempty], int((~nonempty).sum())


@DATASET_MAPPER_REGISTRY.register()
class MutualGuideDatasetMapper:
    """
    Callable like detectron2's DatasetMapper. Output dict: "image" (uint8 tensor 3 x S x S in INPUT.FORMAT),
    "height"/"width" of the original image, the input's other fields ("file_name", "image_id", ...), and at
    train time "instances" with `gt_boxes` (XYXY, pixels of the S x S image) and `gt_classes` (from 0).

    Train time: boxes outside the image are clipped and empty ones dropped, here and nowhere else (counted in
    `self.num_dropped_empty` and logged; the model refuses an empty box rather than dropping it again); the
    augmentation (INPUT.MG_AUGMENT) or a plain resize runs, and the boxes whose shorter side is not more than
    MIN_BOX_SIDE_RATIO of the image are dropped. If none is left, the original image is resized
    (`fallback_resize`) and keeps all its boxes. An image without objects is only resized (`fallback_resize`)
    and gives empty Instances. Test time: `resize.resize_to_input` only, annotations removed.
    """

    @configurable
    def __init__(
        self, is_train, *, augmentations, image_format, min_box_side_ratio, size, fallback_resize=None,
        train_crowd_boxes=False,
    ):
        """
        Args:
            is_train: train-time (augment, keep annotations) or test-time (resize only) mapping.
            augmentations: the train-time Augmentations, ending at size x size.
            image_format: the format images are read in (INPUT.FORMAT).
            min_box_side_ratio: boxes whose shorter side is not more than this fraction of the image side are
                dropped after augmentation.
            size: the input side (test-time resize).
            fallback_resize: the resize of images without objects and of the fall-back; the paper's code picks a
                random interpolation. Default: cv2.INTER_LINEAR.
            train_crowd_boxes: train crowd annotations as ordinary objects (the paper's COCO loader does).
        """
        self.is_train = is_train
        self.augmentations = augmentations
        self.size = size
        self.fallback_resize = fallback_resize or plain_resize(size)
        self.image_format = image_format
        self.min_box_side_ratio = min_box_side_ratio
        self.train_crowd_boxes = train_crowd_boxes
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
            # the paper's code resizes a fall-back with a random interpolation, the authors' later code linearly
            "fallback_resize": RandomInterpolationResize(cfg.INPUT.SIZE)
            if cfg.INPUT.MG_AUGMENT and cfg.INPUT.MG_AUGMENT_RECIPE == "paper" else None,
            "train_crowd_boxes": cfg.INPUT.TRAIN_CROWD_BOXES,
        }

    def __call__(self, dataset_dict):
        # a shallow copy: nothing below changes the input's values, only the copy's keys
        dataset_dict = dict(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        annotations = dataset_dict.pop("annotations", None)

        if not self.is_train:
            dataset_dict["image"] = _to_tensor(resize_to_input(image, self.size))
            return dataset_dict

        boxes, classes, dropped = annotations_to_boxes(annotations or [], image.shape[:2], self.train_crowd_boxes)
        if dropped:
            self.num_dropped_empty += dropped
            # each data-loader worker holds its own copy of the mapper, hence its own count
            log_every_n_seconds(
                logging.WARNING,
                f"Dropped {dropped} empty box(es) of {dataset_dict['file_name']} (no width or height once clipped "
                f"to the image; {self.num_dropped_empty} dropped by this data-loader process since it started)",
                n=60,
                name=__name__,
            )

        aug_input = self.augment(image, boxes)[0] if len(boxes) else None
        if aug_input is None or not len(aug_input.boxes):
            aug_input = DetectionAugInput(image, boxes=boxes)
            self.fallback_resize(aug_input)

        instances = Instances(aug_input.image.shape[:2])
        instances.gt_boxes = Boxes(torch.as_tensor(aug_input.boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.as_tensor(classes[aug_input.kept], dtype=torch.int64)
        dataset_dict["image"] = _to_tensor(aug_input.image)
        dataset_dict["instances"] = instances
        return dataset_dict

    def augment(self, image, boxes):
        """
        Run the augmentations on an image (H x W x 3 uint8) and its boxes (N x 4 XYXY), then drop the boxes under
        the minimum side. Returns the DetectionAugInput and the transforms applied. No fall-back here.
        """
        aug_input = DetectionAugInput(image, boxes=boxes)
        transforms = T.AugmentationList(self.augmentations)(aug_input)
        keep = min_side_keep(aug_input.boxes, aug_input.image.shape[:2], self.min_box_side_ratio)
        aug_input.boxes, aug_input.kept = aug_input.boxes[keep], aug_input.kept[keep]
        return aug_input, transforms


def _to_tensor(image):
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def build_dataset_mapper(cfg, is_train):
    """
    The mapper named by INPUT.DATASET_MAPPER in DATASET_MAPPER_REGISTRY, built as `Mapper(cfg, is_train=...)`:
    "MutualGuideDatasetMapper" (the paper's augmentation, S x S inputs: what MutualGuideDetector takes) or
    "DatasetMapper" (detectron2's, its multi-scale resize, flip and padding: what detectron2's RetinaNet and
    MutualGuideRetinaNet take). A mapper of your own is registered the same way.
    """
    name = cfg.INPUT.DATASET_MAPPER
    if name not in DATASET_MAPPER_REGISTRY:
        raise ValueError(
            f"INPUT.DATASET_MAPPER {name!r} is not a registered dataset mapper; registered: "
            f"{', '.join(sorted(n for n, _ in DATASET_MAPPER_REGISTRY))}"
        )
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train=is_train)


def build_test_transform(cfg):
    """
    The image transform of the config's test-time mapper (INPUT.DATASET_MAPPER, built with is_train=False), for
    images that come from memory rather than from a dataset's files (the predictor, the tiles of sliced inference):
    a callable H x W x C uint8 array -> the array the model takes. MutualGuideDatasetMapper: the resize to
    INPUT.SIZE x INPUT.SIZE (the pixels of `resize.resize_to_input`); detectron2's DatasetMapper:
    ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST). A mapper of your own needs an `augmentations`
    attribute (a list of Augmentations or an AugmentationList), as both of these have.
    """
    mapper = build_dataset_mapper(cfg, is_train=False)
    augmentations = getattr(mapper, "augmentations", None)
    if augmentations is None:
        raise TypeError(
            f"INPUT.DATASET_MAPPER {cfg.INPUT.DATASET_MAPPER!r} has no `augmentations` attribute: the predictor "
            f"cannot apply its test-time transform to an image in memory. Give the mapper its test-time "
            f"augmentations as `self.augmentations`, as detectron2's DatasetMapper does"
        )
    if not isinstance(augmentations, T.AugmentationList):
        augmentations = T.AugmentationList(augmentations)
    return MapperImageTransform(augmentations)


class MapperImageTransform:
    """H x W x C image -> the test-time mapper's image, through its augmentations (`build_test_transform`)."""

    def __init__(self, augmentations):
        self.augmentations = augmentations

    def __call__(self, image):
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        return aug_input.image

    def __repr__(self):
        return f"MapperImageTransform({self.augmentations})"
