"""draw_predictions: detectron2's Visualizer on the two real VOC images."""
import cv2
import numpy as np
from conftest import VOC_MINI_DATASET

from detectron2.data import DatasetCatalog, MetadataCatalog

from mutual_guide.utils.drawing import draw_predictions


def test_visualizer_draws_the_real_voc_images(voc_mini_cfg, ground_truth_as_predictions, predicted_instances):
    voc_mini_cfg()
    records = DatasetCatalog.get(VOC_MINI_DATASET)
    assert len(records) == 2
    metadata = MetadataCatalog.get(VOC_MINI_DATASET)
    for record, size in zip(records, ((725, 512), (764, 512))):  # 353 and 335 pixels wide, enlarged to 512
        image = cv2.imread(record["file_name"])
        instances = predicted_instances(*ground_truth_as_predictions(record), (record["height"], record["width"]))
        drawn = draw_predictions(image, instances, metadata, score_thresh=0.5)
        assert drawn.shape == (*size, 3) and drawn.dtype == np.uint8
        scale = 512 / image.shape[1]
        # the box outlines change pixels along each box's edge, where the box is on the enlarged drawing
        plain = draw_predictions(image, instances[:0], metadata, score_thresh=0.5)
        changed = np.abs(drawn.astype(int) - plain.astype(int)).sum(-1) > 30
        x0, y0, x1, y1 = (instances.pred_boxes.tensor[0] * scale).round().int().tolist()
        assert changed[y0:y1 + 1, x0:x0 + 3].mean() > 0.5 or changed[y0:y0 + 3, x0:x1 + 1].mean() > 0.5
        # a threshold above every score draws nothing
        nothing = draw_predictions(image, instances, metadata, score_thresh=0.95)
        assert np.array_equal(nothing, plain)
