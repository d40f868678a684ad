"""TEST.DRAW: an evaluation that draws each image's predictions with the Visualizer (utils/drawing.py)."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from mutual_guide.data.image_io import read_image
from mutual_guide.utils.atomic_io import write_image
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
            try:
                image = read_image(x["file_name"], format="BGR")  # the pixels training and evaluation saw
            except Exception as e:
                raise OSError(f"Cannot read image {x['file_name']!r} to draw its predictions: {e}") from e
            drawn = draw_predictions(image, out["instances"], self.metadata, self.score_thresh)
            name = os.path.splitext(os.path.basename(x["file_name"]))[0] + ".jpg"
            write_image(os.path.join(self.output_dir, name), drawn)

    def evaluate(self):
        return {}
