"""Drawing with detectron2's Visualizer: on the two real VOC images, through the evaluator hook and demo.py."""
import os

import cv2
import demo
import numpy as np
import pytest
import torch
from conftest import ROOT

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances

from mutual_guide import add_mutual_guide_config
from mutual_guide.data import register_custom_datasets
from mutual_guide.data.builtin import VOC_CLASS_NAMES
from mutual_guide.evaluation.drawer import PredictionDrawer
from mutual_guide.utils.drawing import draw_predictions

NAME = "drawing_voc_mini"


def voc_mini_cfg(root, *opts):
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "mg_shufflenet_ssd_voc.yaml"))
    cfg.DATASETS.CUSTOM = [f"{NAME}:voc:root={root};split=trainval;classes={','.join(VOC_CLASS_NAMES)};year=2007"]
    cfg.DATASETS.TEST = (NAME,)
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(list(opts))
    register_custom_datasets(cfg)
    return cfg


def ground_truth_as_predictions(record):
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
    instances = Instances((record["height"], record["width"]))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.full((len(boxes),), 0.9)
    instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
    return instances


def test_visualizer_draws_the_real_voc_images(voc_mini_root, tmp_path):
    voc_mini_cfg(voc_mini_root)
    records = DatasetCatalog.get(NAME)
    assert len(records) == 2
    metadata = MetadataCatalog.get(NAME)
    for record, size in zip(records, ((725, 512), (764, 512))):  # 353 and 335 pixels wide, enlarged to 512
        image = cv2.imread(record["file_name"])
        instances = ground_truth_as_predictions(record)
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


def test_evaluation_drawer_writes_one_image_per_input(voc_mini_root, tmp_path):
    voc_mini_cfg(voc_mini_root)
    records = DatasetCatalog.get(NAME)
    drawer = PredictionDrawer(NAME, str(tmp_path / "draw" / NAME), score_thresh=0.5)
    drawer.reset()
    drawer.process(records, [{"instances": ground_truth_as_predictions(r)} for r in records])
    written = sorted(os.listdir(tmp_path / "draw" / NAME))
    assert written == ["000001.jpg", "000002.jpg"]


@pytest.mark.slow
def test_demo_script_draws_a_folder(voc_mini_root, tmp_path):
    torch.manual_seed(0)
    cfg = voc_mini_cfg(voc_mini_root)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    out = tmp_path / "drawn"
    count = demo.main([
        "--config-file", os.path.join(ROOT, "configs", "mg_shufflenet_ssd_voc.yaml"),
        "--input", os.path.join(voc_mini_root, "JPEGImages"),
        "--output", str(out), "--confidence-threshold", "0.0",
        "--opts", "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu",
        "DATASETS.CUSTOM", str(cfg.DATASETS.CUSTOM), "DATASETS.TEST", f"('{NAME}',)",
    ])
    assert count == 2
    for name, size in (("000001.jpg", (725, 512)), ("000002.jpg", (764, 512))):
        drawn = cv2.imread(str(out / name))
        original = cv2.imread(os.path.join(voc_mini_root, "JPEGImages", name))
        enlarged = cv2.resize(original, size[::-1], interpolation=cv2.INTER_LINEAR)
        assert drawn.shape == (*size, 3)
        assert np.abs(drawn.astype(int) - enlarged.astype(int)).mean() > 10  # 300 boxes drawn over it
