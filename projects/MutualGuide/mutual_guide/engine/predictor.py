"""Run a trained detector on single images, with the same preprocessing as evaluation."""
import torch

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from mutual_guide.checkpoint.checkpointer import MutualGuideCheckpointer
from mutual_guide.data.resize import resize_to_input

__all__ = ["MutualGuidePredictor"]


class MutualGuidePredictor:
    """
    Like detectron2's DefaultPredictor, with the paper's test transform: the BGR image is resized to
    INPUT.SIZE x INPUT.SIZE by `resize_to_input`, as in evaluation, and boxes come back in the original image's
    pixels.
    detectron2's DefaultPredictor would resize the shortest edge to INPUT.MIN_SIZE_TEST first, which is
    slower here and changes the interpolation, so the outputs would differ from evaluation.
    """

    def __init__(self, cfg, model=None):
        self.cfg = cfg.clone()
        if model is None:
            model = build_model(self.cfg)
            MutualGuideCheckpointer(model).load(cfg.MODEL.WEIGHTS)
            if cfg.MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE:
                model.fuse_for_inference()
        self.model = model.eval()
        self.size = cfg.INPUT.SIZE
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
        resized = resize_to_input(image_bgr, self.size)
        tensor = torch.as_tensor(resized.transpose(2, 0, 1).copy())
        return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"]
