"""PredictionDrawer: the evaluation's drawings of its predictions."""
import os

from conftest import VOC_MINI_DATASET

from detectron2.data import DatasetCatalog

from mutual_guide.evaluation.drawer import PredictionDrawer


def test_evaluation_drawer_writes_one_image_per_input(tmp_path, voc_mini_cfg,
                                                      ground_truth_as_predictions, predicted_instances):
    voc_mini_cfg()
    records = DatasetCatalog.get(VOC_MINI_DATASET)
    drawer = PredictionDrawer(VOC_MINI_DATASET, str(tmp_path / "draw" / VOC_MINI_DATASET), score_thresh=0.5)
    drawer.reset()
    predictions = [predicted_instances(*ground_truth_as_predictions(r), (r["height"], r["width"])) for r in records]
    drawer.process(records, [{"instances": instances} for instances in predictions])
    written = sorted(os.listdir(tmp_path / "draw" / VOC_MINI_DATASET))
    assert written == ["000001.jpg", "000002.jpg"]
