"""TEST.DRAW: an evaluation that draws each image's predictions with the Visualizer (utils/drawing.py)."""
import os

import cv2

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from mutual_guide.utils.drawing import draw_predictions

__all__ = ["PredictionDrawer"]


class PredictionDrawer(DatasetEvaluator):
    """An 'evaluator' that draws each image's predictions into `output_dir` (one JPEG per input image)."""

    def __init__(self, dataset_name, output_dir, score_thresh=0.3):
        self.metadata = MetadataCatalog.get(dataset_name)
        self.output_dir = output_dir
        self.score_thresh = score_thresh

    def reset(self):
        os.makedirs(self.output_dir, exist_ok=True)

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            image = cv2.imread(x["file_name"], cv2.IMREAD_COLOR)
            if image is None:
                raise OSError(f"Cannot read image {x['file_name']!r} to draw its predictions")
            drawn = draw_predictions(image, out["instances"], self.metadata, self.score_thresh)
            name = os.path.splitext(os.path.basename(x["file_name"]))[0] + ".jpg"
            cv2.imwrite(os.path.join(self.output_dir, name), drawn)

    def evaluate(self):
        return {}
