"""The detector's detectron2 interface: training inputs, bad ground truth, eval outputs in original pixels."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from mutual_guide.modeling.batching import batch_ground_truth

SIZE = 128


@pytest.fixture
def make_model(make_cfg):
    """make_model(mutual_guidance=True, num_classes=3): a ShuffleNetV2-SSD detector at 128 px, torch seed 0."""

    def build(mutual_guidance=True, num_classes=3):
        cfg = make_cfg("ShuffleNetV2", "SSD", SIZE, num_classes, opts=["MODEL.MUTUAL_GUIDE.ENABLED", mutual_guidance])
        torch.manual_seed(0)
        return build_model(cfg)

    return build


def training_input(boxes, classes, height=SIZE, width=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    return {"image": image, "instances": instances, "height": height, "width": width}


@pytest.mark.parametrize("mutual_guidance", [True, False])
def test_image_without_boxes_trains(mutual_guidance, make_model):
    model = make_model(mutual_guidance).train()
    losses = model([training_input([], []), training_input([], [], seed=1)])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert float(losses["loss_box_reg"]) == 0.0
    sum(losses.values()).backward()  # still connected to the graph
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.conf.parameters())


@pytest.mark.parametrize("box, what", [([30, 30, 30, 80], "empty"), ([5, 40, 90, float("nan")], "not finite")])
def test_box_the_mapper_would_have_dropped_is_refused_naming_the_file(box, what, make_model):
    """Clipping and dropping is the mapper's alone: the model does not drop a second time, it says what is wrong."""
    model = make_model().train()
    good = training_input([[10, 10, 60, 70]], [1])
    bad = training_input([[10, 10, 60, 70], box], [1, 0])
    bad["file_name"] = "images/broken.jpg"
    with pytest.raises(ValueError, match=rf"broken\.jpg.*{what}"):
        model([good, bad])


def test_ground_truth_of_non_square_images_is_scaled_and_padded():
    """An image of 64 x 256 is resized to S x S inside the model; its boxes must follow."""
    square = training_input([[32, 32, 96, 96], [100, 120, 128, 128]], [0, 2], SIZE, SIZE)
    wide = training_input([[64, 16, 192, 48]], [1], height=64, width=256)
    gt = batch_ground_truth([square, wide], SIZE, torch.device("cpu"))
    assert gt.boxes.tolist() == [
        [[32.0, 32.0, 96.0, 96.0], [100.0, 120.0, 128.0, 128.0]],
        [[32.0, 32.0, 96.0, 96.0], [0.0, 0.0, 0.0, 0.0]],
    ]
    assert gt.classes.tolist() == [[0, 2], [1, 0]]
    assert gt.valid.tolist() == [[True, True], [True, False]]


def test_inference_returns_boxes_in_original_pixels(make_model):
    model = make_model().eval()
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        out_square = model([{"image": image}])[0]["instances"]
        out_big = model([{"image": image, "height": 2 * SIZE, "width": 3 * SIZE}])[0]["instances"]
    assert len(out_square) > 0 and len(out_square) <= 300
    assert out_big.image_size == (2 * SIZE, 3 * SIZE)
    expected = out_square.pred_boxes.tensor * torch.tensor([3.0, 2.0, 3.0, 2.0])
    assert torch.allclose(out_big.pred_boxes.tensor, expected, atol=1e-3)
    assert torch.equal(out_big.pred_classes, out_square.pred_classes)
    assert (out_square.scores > model.test_score_thresh).all()
    assert out_square.pred_classes.max() < 3
    # boxes are clipped to the image
    boxes = out_square.pred_boxes.tensor
    assert boxes.min() >= 0 and boxes.max() <= SIZE


@pytest.mark.slow
def test_fused_inference_keeps_outputs(make_model):
    """BatchNorm folding and the NHWC layout change nothing but the speed."""
    model = make_model().eval()
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    batch = [{"image": im} for im in images]
    with torch.no_grad():
        normalised = model.preprocess_image(batch).tensor
        logits, deltas = model.predict(normalised)
        before = model(batch)
        model.fuse_for_inference()
        fused_logits, fused_deltas = model.predict(normalised)
        after = model(batch)
    assert torch.allclose(fused_logits, logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(fused_deltas, deltas, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(before, after):
        # detections of a random network tie in score, so compare the best score and the count
        a, b = a["instances"], b["instances"]
        assert abs(len(a) - len(b)) <= 3
        assert float(a.scores[0]) == pytest.approx(float(b.scores[0]), abs=1e-4)
