"""VIS_PERIOD: training images with the anchors each task trains on, in the TensorBoard event file."""
import glob

import numpy as np
import pytest
import torch
import train_net
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.modeling.assignment import AnchorLabels
from mutual_guide.modeling.batching import GroundTruth
from mutual_guide.modeling.training_samples import draw_training_sample, put_training_samples

# A 64 x 64 image drawn 8x (512 px) below a legend band; three anchors, one of each kind.
ANCHORS = np.array([[8, 8, 24, 24], [32, 32, 56, 56], [40, 4, 60, 20]], dtype=np.float32)
SCALE = 8


def _is(colour, pixels, tol=40):
    """Which RGB pixels are within `tol` of a colour (lime, orange, yellow, grey)."""
    rgb = {"lime": (0, 255, 0), "orange": (255, 165, 0), "yellow": (255, 255, 0)}[colour]
    return (np.abs(pixels.astype(int) - rgb) <= tol).all(-1)


def _band(drawing):
    return drawing.shape[0] - 64 * SCALE


def test_each_kind_of_anchor_is_drawn_at_its_anchor_only():
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    cls_positive, reg_positive, ignored = np.eye(3, dtype=bool)
    drawing = draw_training_sample(image, np.zeros((0, 4)), [], ANCHORS, cls_positive, reg_positive, ignored)
    band = _band(drawing)
    assert drawing.shape[1] == 512 and band > 0
    body = drawing[band:]
    # anchor 0's left edge (x = 64 in the drawing) is green along its whole height, anchor 1's dashed orange
    left0 = body[8 * SCALE + 8 : 24 * SCALE - 8, 8 * SCALE - 1 : 8 * SCALE + 2]
    assert _is("lime", left0).any(1).mean() > 0.95
    left1 = body[32 * SCALE + 8 : 56 * SCALE - 8, 32 * SCALE - 1 : 32 * SCALE + 2]
    assert 0.3 < _is("orange", left1).any(1).mean() < 0.95  # dashed
    # the ignored anchor is a dot at its centre (50, 12)
    assert _is("yellow", body[12 * SCALE - 1 : 12 * SCALE + 2, 50 * SCALE - 1 : 50 * SCALE + 2]).all()
    # nowhere else: green only around anchor 0, orange only around anchor 1, yellow only around (50, 12)
    ys, xs = np.nonzero(_is("lime", body))
    assert xs.min() >= 8 * SCALE - 3 and xs.max() <= 24 * SCALE + 3 and ys.max() <= 24 * SCALE + 3
    ys, xs = np.nonzero(_is("orange", body))
    assert xs.min() >= 32 * SCALE - 3 and ys.min() >= 32 * SCALE - 3
    ys, xs = np.nonzero(_is("yellow", body, tol=10))
    assert np.abs(xs - 50 * SCALE).max() <= 5 and np.abs(ys - 12 * SCALE).max() <= 5


def test_images_are_denormalised_to_rgb_and_labels_read_per_image():
    mean = torch.tensor([104.0, 117.0, 123.0]).view(3, 1, 1)
    std = torch.tensor([1.0, 2.0, 1.0]).view(3, 1, 1)
    bgr = torch.tensor([[10.0, 100.0, 200.0], [200.0, 30.0, 60.0]]).view(2, 3, 1, 1).expand(2, 3, 64, 64)
    images = (bgr - mean) / std
    # image 1 has anchor 2 ignored and anchor 0 a classification positive of class 1; image 0 has no labels
    cls_labels = torch.tensor([[3, 3, 3], [1, 3, -1]])
    reg_mask = torch.tensor([[False, False, False], [False, True, False]])
    zeros = torch.zeros(2, 3, dtype=torch.long)
    labels = AnchorLabels(cls_labels, reg_mask, zeros, zeros, torch.full((2, 3), 3))
    gt = GroundTruth(torch.tensor([[[0.0, 0, 0, 0]], [[6.0, 40, 20, 60]]]), torch.tensor([[0], [2]]),
                     torch.tensor([[False], [True]]))

    class Storage:
        def __init__(self):
            self.put = []

        def put_image(self, name, image):
            self.put.append((name, image))

    storage = Storage()
    put_training_samples(storage, images, mean, std, gt, labels, torch.from_numpy(ANCHORS), 3, ("a", "b", "c"))
    assert [name for name, _ in storage.put] == ["training_samples/0", "training_samples/1"]
    for (_, chw), expected in zip(storage.put, ([200, 100, 10], [60, 30, 200])):
        assert chw.dtype == np.uint8 and chw.shape[0] == 3 and chw.shape[2] == 512
        body = chw.transpose(1, 2, 0)[_band(chw.transpose(1, 2, 0)):]
        assert np.abs(body[4, 500].astype(int) - expected).max() <= 2  # the corner no mark reaches: the input, RGB
    first, second = (chw.transpose(1, 2, 0)[_band(chw.transpose(1, 2, 0)):] for _, chw in storage.put)
    assert not _is("lime", first).any() and not _is("orange", first).any()
    assert _is("lime", second).any() and _is("orange", second).any()
    assert _is("yellow", second[12 * SCALE - 1 : 12 * SCALE + 2, 50 * SCALE - 1 : 50 * SCALE + 2], tol=10).all()
    # the ground truth box (6, 40)-(20, 60): white outline on its left edge
    assert (second[45 * SCALE : 55 * SCALE, 6 * SCALE] >= 230).all()


@pytest.fixture(scope="module")
def samples_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("visshapes")
    return make_synthetic_dataset(str(root), fmt="coco", num_train=6, num_test=2, image_size=128, seed=3,
                                  name="visshapes")


def _images_in_events(output_dir):
    (events,) = glob.glob(str(output_dir / "events.out.tfevents.*"))
    acc = EventAccumulator(events, size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"], acc


@pytest.mark.slow
@pytest.mark.parametrize("vis_period", [2, 0])
def test_vis_period_writes_the_training_samples_to_the_event_file(samples_data, train_args, tmp_path, vis_period):
    args = train_args(samples_data, tmp_path, "MODEL.BACKBONE.NAME", "ShuffleNetV2", "INPUT.SIZE", 64,
                      "INPUT.MG_AUGMENT", "True", "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 100,
                      "VIS_PERIOD", vis_period, "TEST.EVAL_PERIOD", 0, "DATASETS.TEST", "()")
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    tags, acc = _images_in_events(tmp_path)
    assert "total_loss" in acc.Tags()["scalars"]  # the file was read
    if vis_period == 0:
        assert tags == []
        return
    assert sorted(tags) == ["training_samples/0", "training_samples/1"]  # batch of 2, at most MAX_IMAGES
    for tag in tags:
        shots = acc.Images(tag)
        assert [s.step for s in shots] == [0, 2]  # iterations 0 and 2 of 0, 1, 2
        assert all(s.width == 512 and s.height > 512 for s in shots)  # 64 px drawn 8x, legend band above
