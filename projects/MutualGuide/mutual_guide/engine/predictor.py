"""Run a trained detector on single images, with the same preprocessing as evaluation."""
import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from mutual_guide.checkpoint.checkpointer import MutualGuideCheckpointer
from mutual_guide.data.mapper import build_test_transform
from mutual_guide.engine.precision import precision_from_config
from mutual_guide.engine.slicing import SlicedDetector

__all__ = ["MutualGuidePredictor"]


class MutualGuidePredictor:
    """
    Like detectron2's DefaultPredictor, for every meta-architecture of this project: the BGR image goes through
    the test-time transform of the config's dataset mapper (INPUT.DATASET_MAPPER, `build_test_transform`), the one
    evaluation applies: MutualGuideDatasetMapper resizes to INPUT.SIZE x INPUT.SIZE (the paper's test transform,
    for MutualGuideDetector), detectron2's DatasetMapper resizes the shortest edge to INPUT.MIN_SIZE_TEST (for
    MutualGuideRetinaNet). Boxes come back in the original image's pixels.
    With TEST.SLICE.ENABLED, large images are detected on overlapping tiles (engine/slicing.py), with a progress
    bar from 16 tiles. The network runs in MODEL.PRECISION (engine/precision.py); boxes and scores come back in
    float32.
    """

    def __init__(self, cfg, model=None):
        self.cfg = cfg.clone()
        if model is None:
            model = build_model(self.cfg)
            MutualGuideCheckpointer(model).load(cfg.MODEL.WEIGHTS)
            if cfg.MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE:
                model.fuse_for_inference()
        self.model = model.eval()
        self.transform = build_test_transform(self.cfg)
        self.input_format = cfg.INPUT.FORMAT
        self.precision = precision_from_config(self.cfg, self.model, training=False)  # measured on this network
        self.sliced = (
            SlicedDetector.from_config(self.cfg, self.model, self.transform, progress=True)
            if cfg.TEST.SLICE.ENABLED
            else None
        )
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None

    @torch.no_grad()
    def __call__(self, image_bgr):
        """
        Args:
            image_bgr: H x W x 3 uint8 array in BGR order (as cv2.imread gives).
        Returns:
            detectron2 Instances (pred_boxes, scores, pred_classes) in the image's pixels.
        """
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"Expected an H x W x 3 BGR image, got an array of shape {image_bgr.shape}")
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        with self.precision.autocast():
            if self.sliced is not None:
                return self.sliced.detect(np.ascontiguousarray(image))
            resized = self.transform(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"]
