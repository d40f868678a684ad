"""
DATASETS.BOX_CONVENTION: the boxes training and evaluation read in each convention, on hand-made VOC and COCO files.
"""
import pytest
import torch

from detectron2.data import DatasetCatalog

from mutual_guide.data.box_convention import evaluation_boxes, to_box_convention
from mutual_guide.data.builtin import register_coco_checked, register_voc_checked
from mutual_guide.evaluation.evaluators import COCOEvaluatorWithConvention, VOCEvaluator


def test_voc_box_convention_in_training_and_evaluation(tmp_path, write_voc, voc_object, unique_name,
                                                       evaluate_predictions, ground_truth_as_predictions,
                                                       predicted_instances):
    root = write_voc(tmp_path, {"a": [voc_object("cat", (11, 21, 40, 50))]}, split="test")
    name = unique_name("voc_conv")
    register_voc_checked(name, root, "test", 2012, ("cat",))
    records = DatasetCatalog.get(name)
    assert records[0]["annotations"][0]["bbox"] == [10.0, 20.0, 40.0, 50.0]  # detectron2: xmin/ymin - 1
    paper = to_box_convention(records, "paper", "pascal_voc")
    assert paper[0]["annotations"][0]["bbox"] == [11.0, 21.0, 40.0, 50.0]  # the authors' code: the XML's numbers
    assert records[0]["annotations"][0]["bbox"] == [10.0, 20.0, 40.0, 50.0]  # input left alone

    # What is written for a prediction (10, 20, 40, 50): detectron2 adds 1 to xmin/ymin, the authors' code to all four.
    for convention, line in (("detectron2", "a 0.900 11.0 21.0 40.0 50.0"), ("paper", "a 0.900 11.0 21.0 41.0 51.0")):
        evaluator = VOCEvaluator(name, convention)
        evaluator.reset()
        instances = predicted_instances([[10, 20, 40, 50]], [0.9], [0], (48, 64))
        evaluator.process([records[0]], [{"instances": instances}])
        assert evaluator._predictions[0] == [line]

    # Training boxes given back as predictions: 100 in detectron2's convention. In the authors', its +1 on all
    # four moves each 30 x 30 box by one pixel: IoU 29 * 29 / (900 + 900 - 841) = 0.877, so AP50..AP85
    # are 100 and AP90, AP95 are 0: AP = 80.
    d2 = evaluate_predictions(VOCEvaluator(name, "detectron2"), records, ground_truth_as_predictions)
    assert (d2["AP"], d2["AP50"], d2["AP75"]) == (100.0, 100.0, 100.0)
    ours = evaluate_predictions(VOCEvaluator(name, "paper"), paper, ground_truth_as_predictions)
    assert (ours["AP"], ours["AP50"], ours["AP75"]) == pytest.approx((80.0, 100.0, 100.0))


def test_coco_box_convention_in_training_and_evaluation(tmp_path, unique_name, evaluate_predictions,
                                                        ground_truth_as_predictions, predicted_instances, write_coco):
    data = {
        "images": [{"id": 1, "file_name": "0.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 7, 20, 30], "area": 600},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 40, 20, 10], "area": 200},  # overruns: clipped
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [-3, 2, 20, 20], "area": 400},  # x < 0: shifted
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 7, 20], "area": 140},  # x2 - x1 = 6: dropped
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [9, 9, 20, 20], "area": 0},  # area 0: dropped
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    json_file, images = write_coco(tmp_path, data)
    name = unique_name("coco_conv")
    register_coco_checked(name, {}, json_file, images)
    records = DatasetCatalog.get(name)
    paper = to_box_convention(records, "paper", "coco")
    # x1 = max(0, x), x2 = min(W - 1, x1 + w - 1), likewise y; kept if area > 0 and both sides > 6
    assert [a["bbox"] for a in paper[0]["annotations"]] == [[5, 7, 24, 36], [50, 40, 63, 47], [0, 2, 19, 21]]
    assert to_box_convention(records, "detectron2", "coco") is records

    # Results: detectron2 writes w = x2 - x1, the authors' code w = x2 - x1 + 1.
    for convention, bbox in (("detectron2", [5.0, 7.0, 19.0, 29.0]), ("paper", [5.0, 7.0, 20.0, 30.0])):
        evaluator = COCOEvaluatorWithConvention(name, convention, tasks=("bbox",))
        evaluator.reset()
        instances = predicted_instances([[5, 7, 24, 36]], [0.9], [0], (48, 64))
        evaluator.process([records[0]], [{"instances": instances}])
        assert evaluator._predictions[0]["instances"][0]["bbox"] == pytest.approx(bbox)

    # Training boxes given back as predictions score 100 in either convention (one object, in the image).
    (tmp_path / "one").mkdir()
    data["annotations"] = data["annotations"][:1]
    json_file, images = write_coco(tmp_path / "one", data)
    name = unique_name("coco_round_trip")
    register_coco_checked(name, {}, json_file, images)
    records = DatasetCatalog.get(name)
    for convention in ("detectron2", "paper"):
        train = to_box_convention(records, convention, "coco")
        result = evaluate_predictions(COCOEvaluatorWithConvention(name, convention, tasks=("bbox",)), train,
                           ground_truth_as_predictions)
        assert (result["AP"], result["AP50"], result["AP75"]) == pytest.approx((100.0, 100.0, 100.0)), convention


def test_box_convention_is_validated():
    with pytest.raises(ValueError, match=r"DATASETS.BOX_CONVENTION must be one of \('detectron2', 'paper'\), got 'coco'"):
        to_box_convention([], "coco", "pascal_voc")
    assert torch.equal(evaluation_boxes(torch.tensor([[1.0, 2, 3, 4]]), "paper"), torch.tensor([[1.0, 2, 4, 5]]))


def test_old_name_seed_is_the_paper_convention(tmp_path, write_voc, voc_object, unique_name):
    root = write_voc(tmp_path, {"a": [voc_object("cat", (11, 21, 40, 50))]}, split="test")
    name = unique_name("voc_old_name")
    register_voc_checked(name, root, "test", 2012, ("cat",))
    records = DatasetCatalog.get(name)
    assert to_box_convention(records, "seed", "pascal_voc") == to_box_convention(records, "paper", "pascal_voc")
    boxes = torch.tensor([[1.0, 2, 3, 4]])
    assert torch.equal(evaluation_boxes(boxes, "seed"), evaluation_boxes(boxes, "paper"))
