"""Our VOC and COCO readers, the VOC evaluator built on them, and DATASETS.BOX_CONVENTION, on hand-made files."""
import json
import re
import uuid

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from mutual_guide.data.box_convention import evaluation_boxes, to_box_convention
from mutual_guide.data.builtin import register_coco_checked, register_voc_checked
from mutual_guide.data.coco_reader import read_coco_dataset
from mutual_guide.data.voc_reader import read_voc_dataset
from mutual_guide.evaluation.evaluators import COCOEvaluatorWithConvention, VOCEvaluator

CLASSES = ("cat", "dog", "bird")


def _name(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _outputs(boxes, scores, classes, size):
    instances = Instances(size)
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return [{"instances": instances}]


def _evaluate(evaluator, records, predict):
    """Run `evaluator` with predict(record) -> (boxes, scores, classes) for every record."""
    evaluator.reset()
    for r in records:
        evaluator.process([r], _outputs(*predict(r), (r["height"], r["width"])))
    return evaluator.evaluate()["bbox"]


def _ground_truth_as_predictions(record):
    anns = record["annotations"]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    return boxes, [0.9] * len(anns), [a["category_id"] for a in anns]


# ----------------------------------------------------------------------------- VOC reader
def test_voc_reader_accepts_what_the_format_allows(tmp_path, write_voc, voc_object):
    root = write_voc(tmp_path, {
        # float coordinates, no <pose>/<truncated>/<difficult>, a .png image, no <size>
        "a": [voc_object("cat", (10.5, 20, 30.5, 40), pose=False, truncated=False),
              voc_object("dog", (1, 1, 64, 48), difficult=1)],
    }, size=(64, 48), ext=".png", with_size=False)
    records, problems = read_voc_dataset(root, "train", CLASSES)
    assert problems == []
    (r,) = records
    assert r["file_name"].endswith("JPEGImages/a.png") and (r["width"], r["height"], r["image_id"]) == (64, 48, "a")
    assert [a["bbox"] for a in r["annotations"]] == [[9.5, 19.0, 30.5, 40.0], [0.0, 0.0, 64.0, 48.0]]
    assert [(a["category_id"], a["difficult"]) for a in r["annotations"]] == [(0, 0), (1, 1)]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in r["annotations"])


_BROKEN_XML = {  # case -> (objects of image "a", or a whole XML text; the message expected, None: no problem)
    "malformed": ("<annotation><object><name>cat</name>", r"malformed XML: .*line 1"),
    "no bndbox": (["<object><name>cat</name></object>"], r"object 0 \('cat'\) has no <bndbox>"),
    "no name": (["<object><bndbox><xmin>1</xmin></bndbox></object>"], "object 0 has no <name>"),
    "unknown class": ([("horse", (1, 1, 5, 5))], r"class 'horse' is not in classes= \(cat, dog, bird\)"),
    "not a number": ([("cat", (1, 1, "4O", 5))], r"<xmax> '4O' \(missing or not a number\)"),
    "reversed": ([("dog", (30, 2, 10, 20))], "box reversed: xmin 30 > xmax 10"),
    "outside": ([("dog", (100, 100, 120, 120))], r"box \(99, 99, 120, 120\) lies entirely outside the 64 x 48 image"),
    "no object": ([], None),  # an image without objects is fine
}


@pytest.mark.parametrize("case", sorted(_BROKEN_XML))
def test_voc_reader_errors_name_the_file(tmp_path, write_voc, voc_object, case):
    objects, expected = _BROKEN_XML[case]
    if not isinstance(objects, str):
        objects = [o if isinstance(o, str) else voc_object(*o) for o in objects]
    root = write_voc(tmp_path, {"a": objects, "b": [voc_object("cat", (2, 2, 9, 9))]})
    records, problems = read_voc_dataset(root, "train", CLASSES)
    if expected is None:
        assert problems == [] and len(records) == 2
        return
    (problem,) = problems
    assert problem.path.endswith("Annotations/a.xml") and problem.error and problem.image.endswith("JPEGImages/a.jpg")
    assert str(problem).startswith(f"error: {problem.path}: ")
    assert re.search(expected, problem.message), problem.message
    assert [r["image_id"] for r in records] == ["b"]  # the image in error has no record, the other is read


def test_voc_reader_missing_files_and_split(tmp_path, write_voc, voc_object):
    root = write_voc(tmp_path, {"a": [voc_object("cat", (1, 1, 5, 5))], "b": [voc_object("cat", (1, 1, 5, 5))]})
    (tmp_path / "JPEGImages" / "a.jpg").unlink()
    (tmp_path / "Annotations" / "b.xml").unlink()
    records, problems = read_voc_dataset(root, "train", CLASSES)
    assert records == []
    messages = sorted(str(p) for p in problems)
    assert "Annotations/b.xml: annotation file of image id 'b' (listed in the split file) not found" in messages[0]
    assert "JPEGImages/a.jpg: image of id 'a' not found" in messages[1]
    _, problems = read_voc_dataset(root, "val", CLASSES)
    assert problems[0].fatal and "ImageSets/Main/val.txt: cannot read the split file" in str(problems[0])


# ----------------------------------------------------------------------------- COCO reader
def _coco(tmp_path, data, sizes=((64, 48),)):
    import cv2

    (tmp_path / "images").mkdir(exist_ok=True)
    for k, (w, h) in enumerate(sizes):
        cv2.imwrite(str(tmp_path / "images" / f"{k}.jpg"), np.zeros((h, w, 3), np.uint8))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path), str(tmp_path / "images")


def test_coco_reader_gives_load_coco_jsons_records(tmp_path):
    from detectron2.data.datasets.coco import load_coco_json

    data = {
        "images": [{"id": 7, "file_name": "1.jpg", "width": 32, "height": 40},
                   {"id": 3, "file_name": "0.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 5, "bbox": [1, 2, 10, 20], "iscrowd": 0, "area": 200},
                        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0.5, 0, 4, 4], "iscrowd": 1}],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    }
    json_file, images = _coco(tmp_path, data, sizes=((64, 48), (32, 40)))
    records, problems, meta = read_coco_dataset(json_file, images)
    assert problems == []
    assert meta == {"thing_classes": ["cat", "dog"], "thing_dataset_id_to_contiguous_id": {2: 0, 5: 1}}
    reference = load_coco_json(json_file, images, _name("ref"))
    assert [r["image_id"] for r in records] == [r["image_id"] for r in reference] == [3, 7]
    for ours, theirs in zip(records, reference):
        assert {k: ours[k] for k in ("file_name", "height", "width")} == {k: theirs[k] for k in ("file_name", "height", "width")}
        for a, b in zip(ours["annotations"], theirs["annotations"]):
            assert (a["bbox"], a["category_id"], a["iscrowd"], a["bbox_mode"]) == (
                b["bbox"], b["category_id"], b["iscrowd"], b["bbox_mode"])


# ----------------------------------------------------------------------------- VOC evaluator
def _random_voc(tmp_path, write_voc, voc_object, num_images=12, seed=0):
    rng = np.random.RandomState(seed)
    images = {}
    for i in range(num_images):
        objects = []
        for _ in range(rng.randint(0, 5)):
            x0, y0 = rng.randint(1, 60), rng.randint(1, 44)
            x1, y1 = min(x0 + rng.randint(4, 40), 96), min(y0 + rng.randint(4, 30), 72)
            objects.append(voc_object(CLASSES[rng.randint(3)], (x0, y0, x1, y1), difficult=int(rng.rand() < 0.15)))
        images[f"{i:06d}"] = objects
    return write_voc(tmp_path, images, split="test", size=(96, 72))


def _jittered_predictions(seed):
    rng = np.random.RandomState(seed)

    def predict(record):
        gt_boxes, _, gt_classes = _ground_truth_as_predictions(record)
        kept = [(b, c) for b, c in zip(gt_boxes, gt_classes) if rng.rand() < 0.85]
        boxes = [list(np.array(b) + rng.normal(0, 1.5, 4)) for b, _ in kept]
        classes = [c for _, c in kept]
        scores = list(rng.uniform(0.3, 1.0, len(boxes)))
        for _ in range(2):  # false positives
            x0, y0 = rng.uniform(0, 80), rng.uniform(0, 60)
            boxes.append([x0, y0, x0 + rng.uniform(3, 30), y0 + rng.uniform(3, 20)])
            classes.append(rng.randint(3))
            scores.append(rng.uniform(0.0, 0.7))
        return boxes, np.round(scores, 2).tolist(), classes  # rounded: equal scores happen, as in practice

    return predict


@pytest.mark.parametrize("year", [2007, 2012])
def test_voc_evaluator_gives_detectron2s_numbers(tmp_path, write_voc, voc_object, year):
    root = _random_voc(tmp_path, write_voc, voc_object)
    name = _name("voc_eval")
    register_voc_checked(name, root, "test", year, CLASSES)
    records = DatasetCatalog.get(name)
    ours = _evaluate(VOCEvaluator(name), records, _jittered_predictions(1))
    theirs = _evaluate(PascalVOCDetectionEvaluator(name), records, _jittered_predictions(1))
    assert 20 < ours["AP"] < ours["AP50"] < 90  # a metric with room to differ
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])


def test_voc_evaluation_accepts_every_file_training_accepts(tmp_path, write_voc, voc_object):
    # Float coordinates and no <pose>/<truncated>: detectron2's evaluator fails on them, ours reads what
    # training reads, and the training boxes given back as predictions score 100.
    root = write_voc(tmp_path, {
        "a": [voc_object("cat", (10.5, 20, 40.5, 45), pose=False, truncated=False)],
        "b": [voc_object("dog", (3, 4, 50, 40), pose=False)],
    }, split="test")
    name = _name("voc_float")
    register_voc_checked(name, root, "test", 2007, ("cat", "dog"))
    records = DatasetCatalog.get(name)
    result = _evaluate(VOCEvaluator(name), records, _ground_truth_as_predictions)
    assert (result["AP"], result["AP50"], result["AP75"]) == pytest.approx((100.0, 100.0, 100.0))
    with pytest.raises((ValueError, AttributeError)):
        _evaluate(PascalVOCDetectionEvaluator(name), records, _ground_truth_as_predictions)


# ----------------------------------------------------------------------------- DATASETS.BOX_CONVENTION
def test_voc_box_convention_in_training_and_evaluation(tmp_path, write_voc, voc_object):
    root = write_voc(tmp_path, {"a": [voc_object("cat", (11, 21, 40, 50))]}, split="test")
    name = _name("voc_conv")
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
        evaluator.process([records[0]], _outputs([[10, 20, 40, 50]], [0.9], [0], (48, 64)))
        assert evaluator._predictions[0] == [line]

    # Training boxes given back as predictions: 100 in detectron2's convention. In the authors', its +1 on all
    # four moves each 30 x 30 box by one pixel: IoU 29 * 29 / (900 + 900 - 841) = 0.877, so AP50..AP85
    # are 100 and AP90, AP95 are 0: AP = 80.
    d2 = _evaluate(VOCEvaluator(name, "detectron2"), records, _ground_truth_as_predictions)
    assert (d2["AP"], d2["AP50"], d2["AP75"]) == (100.0, 100.0, 100.0)
    ours = _evaluate(VOCEvaluator(name, "paper"), paper, _ground_truth_as_predictions)
    assert (ours["AP"], ours["AP50"], ours["AP75"]) == pytest.approx((80.0, 100.0, 100.0))


def test_coco_box_convention_in_training_and_evaluation(tmp_path):
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
    json_file, images = _coco(tmp_path, data)
    name = _name("coco_conv")
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
        evaluator.process([records[0]], _outputs([[5, 7, 24, 36]], [0.9], [0], (48, 64)))
        assert evaluator._predictions[0]["instances"][0]["bbox"] == pytest.approx(bbox)

    # Training boxes given back as predictions score 100 in either convention (one object, in the image).
    (tmp_path / "one").mkdir()
    data["annotations"] = data["annotations"][:1]
    json_file, images = _coco(tmp_path / "one", data)
    name = _name("coco_round_trip")
    register_coco_checked(name, {}, json_file, images)
    records = DatasetCatalog.get(name)
    for convention in ("detectron2", "paper"):
        train = to_box_convention(records, convention, "coco")
        result = _evaluate(COCOEvaluatorWithConvention(name, convention, tasks=("bbox",)), train,
                           _ground_truth_as_predictions)
        assert (result["AP"], result["AP50"], result["AP75"]) == pytest.approx((100.0, 100.0, 100.0)), convention


def test_box_convention_is_validated():
    with pytest.raises(ValueError, match=r"DATASETS.BOX_CONVENTION must be one of \('detectron2', 'paper'\), got 'coco'"):
        to_box_convention([], "coco", "pascal_voc")
    assert torch.equal(evaluation_boxes(torch.tensor([[1.0, 2, 3, 4]]), "paper"), torch.tensor([[1.0, 2, 4, 5]]))


def test_old_name_seed_is_the_paper_convention(tmp_path, write_voc, voc_object):
    root = write_voc(tmp_path, {"a": [voc_object("cat", (11, 21, 40, 50))]}, split="test")
    name = _name("voc_old_name")
    register_voc_checked(name, root, "test", 2012, ("cat",))
    records = DatasetCatalog.get(name)
    assert to_box_convention(records, "seed", "pascal_voc") == to_box_convention(records, "paper", "pascal_voc")
    boxes = torch.tensor([[1.0, 2, 3, 4]])
    assert torch.equal(evaluation_boxes(boxes, "seed"), evaluation_boxes(boxes, "paper"))


def test_voc_reader_gives_load_voc_instances_records_on_real_voc(voc_mini_root):
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances

    ours, problems = read_voc_dataset(voc_mini_root, "trainval", CLASS_NAMES)
    assert problems == []
    theirs = load_voc_instances(voc_mini_root, "trainval", CLASS_NAMES)
    for a in ours:
        assert [ann.pop("difficult") for ann in a["annotations"]] == [0] * len(a["annotations"])
    assert ours == theirs


def test_image_size_follows_exif_rotation(tmp_path):
    from PIL import Image

    from mutual_guide.data.image_header import read_image_size

    exif = Image.Exif()
    exif[274] = 6  # rotated 90 degrees: detectron2's read_image returns it 40 wide, 30 high
    Image.new("RGB", (30, 40)).save(tmp_path / "rotated.jpg", exif=exif)
    Image.new("RGB", (30, 40)).save(tmp_path / "plain.jpg")
    assert read_image_size(str(tmp_path / "rotated.jpg")) == (40, 30)
    assert read_image_size(str(tmp_path / "plain.jpg")) == (30, 40)
    from detectron2.data.detection_utils import read_image

    assert read_image(str(tmp_path / "rotated.jpg")).shape[:2] == (30, 40)
