"""MutualGuidePredictor: each config's own test transform (the one its test-time dataset mapper applies), boxes in
the original image's pixels, and demo.py on the RetinaNet config."""
import os

import cv2
import demo
import numpy as np
import pytest
import torch
from conftest import ROOT

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mutual_guide import add_mutual_guide_config
from mutual_guide.data import build_dataset_mapper
from mutual_guide.engine.predictor import MutualGuidePredictor

RETINANET = os.path.join(ROOT, "configs", "retinanet_R50_FPN_mg_coco.yaml")
# a small, untrained MutualGuideRetinaNet: ResNet-18, images resized to a shortest edge of 64, at most 128
RETINANET_OPTS = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
                  "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
                  "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]


def retinanet_cfg():
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(RETINANET)
    cfg.merge_from_list(RETINANET_OPTS)
    return cfg


def predict_recording_inputs(cfg, image):
    """The predictor's Instances on `image`, and the image tensors its model was handed."""
    torch.manual_seed(0)
    predictor = MutualGuidePredictor(cfg, model=build_model(cfg))
    seen = []
    predictor.model.register_forward_pre_hook(lambda module, args: seen.append(args[0][0]["image"]))
    return predictor, predictor(image), seen


@pytest.fixture
def image():
    """A 100 x 150 BGR image of noise (an untrained network finds boxes anywhere on it)."""
    return np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "config, seen_shape",
    [
        # detectron2's ResizeShortestEdge(64, 128): 100 x 150 -> 64 x 96
        ("retinanet", (3, 64, 96)),
        # MutualGuideDatasetMapper: INPUT.SIZE x INPUT.SIZE, aspect ratio not kept
        ("mutual_guide", (3, 64, 64)),
    ],
)
def test_the_model_sees_its_configs_test_transform_and_boxes_come_back_in_the_images_pixels(
    config, seen_shape, image, make_cfg, tmp_path
):
    cfg = retinanet_cfg() if config == "retinanet" else make_cfg(size=64, num_classes=3)
    if config == "mutual_guide":
        cfg.MODEL.MUTUAL_GUIDE.SCORE_THRESH_TEST = 0.0
    predictor, found, seen = predict_recording_inputs(cfg, image)
    assert tuple(seen[0].shape) == seen_shape
    # the pixels are the test-time mapper's, as evaluation reads the same image from a file
    cv2.imwrite(str(tmp_path / "noise.png"), image)
    mapped = build_dataset_mapper(cfg, is_train=False)({"file_name": str(tmp_path / "noise.png"), "height": 100,
                                                          "width": 150})
    assert torch.equal(seen[0], mapped["image"])
    # boxes in the 100 x 150 image's pixels: the model's own boxes at the network's size, scaled back
    height, width = seen_shape[1:]
    at_input_size = predictor.model([{"image": seen[0], "height": height, "width": width}])[0]["instances"]
    assert len(found) > 0 and found.image_size == (100, 150)
    scale = torch.tensor([150 / width, 100 / height] * 2)
    torch.testing.assert_close(found.pred_boxes.tensor, at_input_size.pred_boxes.tensor * scale, atol=1e-3, rtol=1e-4)
    assert found.pred_boxes.tensor[:, 2].max() > width  # beyond the network's input: scaled back indeed


def test_an_rgb_config_gets_rgb_pixels(image, make_cfg):
    """The predictor takes BGR (cv2's order) and hands the model INPUT.FORMAT, as detectron2's DefaultPredictor."""
    cfg = make_cfg(size=64, num_classes=3)
    cfg.INPUT.FORMAT = "RGB"
    _, _, seen = predict_recording_inputs(cfg, image)
    _, _, seen_bgr = predict_recording_inputs(make_cfg(size=64, num_classes=3), image)
    assert torch.equal(seen[0], seen_bgr[0].flip(0))


def test_demo_draws_with_the_retinanet_config_and_random_weights(tmp_path, image):
    cv2.imwrite(str(tmp_path / "noise.png"), image)
    # no DATASETS.TEST: COCO's class names are not on this machine, class ids are drawn
    argv = ["--config-file", RETINANET, "--input", str(tmp_path / "noise.png"), "--output", str(tmp_path / "out"),
            "--allow-random-weights", "--confidence-threshold", "0.0", "--opts", *RETINANET_OPTS, "DATASETS.TEST", "()"]
    assert demo.main(argv) == 1
    drawing = cv2.imread(str(tmp_path / "out" / "noise.png"))
    assert drawing is not None and drawing.shape[1] >= 512  # drawings are at least 512 px wide
