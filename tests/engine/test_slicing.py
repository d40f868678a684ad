"""Sliced inference (engine/slicing.py): the tile layout, boxes shifted back, objects cut by a tile border, the
whole-image pass, the predictor on a large image, and --eval-only on tiles."""
import json
import uuid

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from mutual_guide.data import register_custom_datasets
from mutual_guide.data.resize import resize_to_input
from mutual_guide.engine.predictor import MutualGuidePredictor
from mutual_guide.engine.preflight import check_config
from mutual_guide.engine.trainer import Trainer
from mutual_guide.engine.slicing import SlicedDetector, axis_starts, drop_boxes_on_inner_borders, tile_layout


class PerfectDetector(nn.Module):
    """
    Stands for the model: finds the white blobs of its input image (connected components), returns their boxes
    in "height" x "width" pixels as detectron2's detector_postprocess does (scaled, clipped), score 0.9, class 0.
    Keeps the shape of every image it is given.
    """

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, batched_inputs):
        outputs = []
        for inputs in batched_inputs:
            image = inputs["image"]
            self.shapes.append(tuple(image.shape))
            mask = (image[0] > 127).numpy().astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
            x, y, w, h = (torch.as_tensor(stats[1:, i], dtype=torch.float32) for i in range(4))
            boxes = torch.stack([x, y, x + w, y + h], 1).reshape(-1, 4)
            height, width = inputs["height"], inputs["width"]
            boxes *= torch.tensor([width / image.shape[2], height / image.shape[1]] * 2)
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(boxes)
            instances.pred_boxes.clip((height, width))
            instances.scores = torch.full((count - 1,), 0.9)
            instances.pred_classes = torch.zeros(count - 1, dtype=torch.int64)
            outputs.append({"instances": instances})
        return outputs


def canvas(height, width, boxes):
    """Black H x W x 3 uint8 image with white rectangles at the XYXY `boxes` (pixels [x0, x1) x [y0, y1))."""
    image = np.zeros((height, width, 3), np.uint8)
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] = 255
    return image


def sliced(model, tile=320, overlap=0.25, whole_image=False, size=320):
    return SlicedDetector(model, lambda image: resize_to_input(image, size), tile_size=tile, overlap=overlap,
                          whole_image=whole_image, nms_thresh=0.5, max_detections=100, tiles_per_batch=4)


def rounded(instances):
    return sorted(tuple(round(v) for v in box) for box in instances.pred_boxes.tensor.tolist())


def test_tiles_cover_the_image_with_the_overlap_and_stay_inside():
    # width 1000, tile 320, overlap 0.25: stride at most 320 * 0.75 = 240, so ceil(680 / 240) + 1 = 4 tiles evenly
    # spread from 0 to 1000 - 320 = 680 (shared: 93, 94, 93 px >= 80); height 700: 3 tiles from 0 to 380
    assert axis_starts(1000, 320, 0.25) == [0, 227, 453, 680]
    assert axis_starts(700, 320, 0.25) == [0, 190, 380]
    tiles = tile_layout(700, 1000, 320, 0.25)
    assert len(tiles) == 12 and tiles[0] == (0, 0, 320, 320) and tiles[-1] == (680, 380, 1000, 700)
    covered = np.zeros((700, 1000), bool)
    for x0, y0, x1, y1 in tiles:
        assert 0 <= x0 and 0 <= y0 and x1 <= 1000 and y1 <= 700 and (x1 - x0, y1 - y0) == (320, 320)
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    # an exact fit needs no extra tile; an image smaller than a tile is one tile of its own size
    assert axis_starts(800, 320, 0.25) == [0, 240, 480]  # (800 - 320) / 240 = 2 strides
    assert tile_layout(200, 100, 320, 0.25) == [(0, 0, 100, 200)]
    with pytest.raises(ValueError, match="OVERLAP must be in"):
        tile_layout(700, 1000, 320, 1.0)


def test_boxes_are_shifted_back_to_the_image_exactly():
    # one 20 x 20 square in the middle of each tile's own part of the image, far from every tile border
    tiles = tile_layout(700, 1000, 320, 0.25)
    squares = [(x0 + 150, y0 + 150, x0 + 170, y0 + 170) for x0, y0, _, _ in tiles]
    model = PerfectDetector()
    found = sliced(model).detect(canvas(700, 1000, squares))
    assert rounded(found) == sorted(squares)
    assert found.image_size == (700, 1000)
    # every tile reached the model at the network's size, through the transform
    assert set(model.shapes) == {(3, 320, 320)} and len(model.shapes) == 12


def test_an_object_cut_by_a_tile_border_comes_out_once_and_whole():
    # x 300..340 crosses the right border of the first tile column (x = 320) and lies inside the second (227..547)
    obj = (300, 100, 340, 130)
    image = canvas(700, 1000, [obj])
    first_tile = PerfectDetector()([{"image": torch.as_tensor(image[:320, :320].transpose(2, 0, 1).copy()),
                                     "height": 320, "width": 320}])[0]["instances"]
    half = first_tile.pred_boxes.tensor
    assert half.tolist() == [[300.0, 100.0, 320.0, 130.0]]  # the first tile sees half of it...
    assert drop_boxes_on_inner_borders(half, (0, 0, 320, 320), 700, 1000).tolist() == [False]  # ...and drops it
    assert rounded(sliced(PerfectDetector()).detect(image)) == [obj]


def test_the_whole_image_pass_adds_the_objects_larger_than_the_overlap():
    # 500 x 400 px: wider than the 93 px the tiles share, so every tile holding it cuts it and drops its piece
    big, small = (200, 100, 700, 500), (850, 600, 870, 620)
    image = canvas(700, 1000, [big, small])
    assert rounded(sliced(PerfectDetector(), whole_image=False).detect(image)) == [small]
    model = PerfectDetector()
    found = rounded(sliced(model, whole_image=True).detect(image))
    # the whole image went through the 320 x 320 resize and back: the big box within a pixel or two
    assert len(found) == 2 and found[1] == small
    np.testing.assert_allclose(found[0], big, atol=3)
    assert len(model.shapes) == 13  # 12 tiles and the whole image


def test_the_predictor_slices_a_large_image_and_returns_boxes_in_its_pixels(make_cfg):
    cfg = make_cfg(size=64)
    cfg.TEST.SLICE.ENABLED = True
    cfg.TEST.SLICE.WHOLE_IMAGE = False
    # 12 px squares in a 900 x 1200 image: 1 px once squashed to 64 x 64, in reach at the tiles' own scale
    squares = [(30, 40, 42, 52), (600, 450, 612, 462), (1180, 880, 1192, 892), (90, 700, 102, 712)]
    image = canvas(900, 1200, squares)
    model = PerfectDetector()
    found = MutualGuidePredictor(cfg, model=model)(image)
    assert rounded(found) == sorted(squares)
    assert set(model.shapes) == {(3, 64, 64)}
    # without slicing the same detector, given the squashed image, misplaces them by several pixels
    cfg.TEST.SLICE.ENABLED = False
    whole = MutualGuidePredictor(cfg, model=PerfectDetector())(image)
    assert rounded(whole) != sorted(squares)


def test_eval_only_with_slicing_evaluates_the_tiles_at_full_resolution(tmp_path, make_cfg):
    """Trainer.test (train_net.py --eval-only, and TEST.EVAL_PERIOD) on 12 px squares in 900 x 1200 images."""
    images, annotations = [], []
    for i in range(2):
        squares = [(30 + 300 * i, 40, 42 + 300 * i, 52), (600, 450 + 100 * i, 612, 462 + 100 * i),
                   (1180, 880, 1192, 892)]
        cv2.imwrite(str(tmp_path / f"{i}.png"), canvas(900, 1200, squares))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 900, "width": 1200})
        annotations += [{"id": len(annotations) + k + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
                        for k, (x0, y0, x1, y1) in enumerate(squares)]
    with open(tmp_path / "squares.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "square"}]}, f)
    name = f"squares{uuid.uuid4().hex[:6]}"
    cfg = make_cfg(size=64, num_classes=1)
    cfg.DATASETS.CUSTOM = [f"{name}:coco:json={tmp_path / 'squares.json'};images={tmp_path}"]
    cfg.DATASETS.TEST = (name,)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.SLICE.WHOLE_IMAGE = False
    register_custom_datasets(cfg)

    squashed = Trainer.test(cfg, PerfectDetector())["bbox"]  # one dataset: its results alone
    cfg.TEST.SLICE.ENABLED = True
    model = PerfectDetector()
    on_tiles = Trainer.test(cfg, model)["bbox"]
    # 64 px tiles, stride at most 48: 19 rows and 25 columns in each image
    assert set(model.shapes) == {(3, 64, 64)} and len(model.shapes) == 2 * 19 * 25
    assert on_tiles["AP"] == pytest.approx(100.0)
    assert squashed["AP"] < 50.0  # a 12 px square is 1 px at 64 x 64: found, but misplaced by several pixels


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("OVERLAP", 1.0, r"TEST.SLICE.OVERLAP must be a fraction of the tile side in \[0, 1\), got 1.0"),
        ("TILE_SIZE", -64, r"TEST.SLICE.TILE_SIZE must be 0 \(INPUT.SIZE\) or a positive number of pixels, got -64"),
    ],
)
def test_the_config_check_names_a_slice_value_that_cannot_work(make_cfg, key, value, message):
    cfg = make_cfg()
    check_config(cfg, training=False)  # the defaults pass
    cfg.TEST.SLICE[key] = value
    with pytest.raises(ValueError, match=message):
        check_config(cfg, training=False)
