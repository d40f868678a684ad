"""INPUT.MG_AUGMENT_RECIPE "authors_2023": the crop-or-zoom-out window by hand, and the recipe in the mapper."""
import numpy as np
import pytest

from detectron2.data import transforms as T

from mutual_guide.data import MutualGuideDatasetMapper
from mutual_guide.data.augmentation import DetectionAugInput, PhotometricDistortion, build_augmentation
from mutual_guide.data.crop_expand import CropExpandTransform, RandomCropExpand, ToUint8


def _image(size=100, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(size, size, 3)).astype(np.uint8)


def test_a_window_crops_and_zooms_out_at_once():
    image = _image()
    # window 1.0 wide, 0.5 high, centred at (0.25, 0.5): corner (-0.25, 0.25); its image part x 0-0.75, y 0.25-0.75
    boxes = np.array([[10, 30, 40, 60], [80, 10, 95, 20]], np.float32)  # centres (25, 45) inside, (87.5, 15) not
    tfm = RandomCropExpand().window(boxes / 100.0, 100, 100, 0.25, 0.5, 1.0, 0.5)
    assert isinstance(tfm, CropExpandTransform)
    assert (tfm.src, tfm.dst_x, tfm.dst_y, tfm.canvas_h, tfm.canvas_w) == ((0, 25, 75, 75), 25, 0, 50, 100)
    aug = DetectionAugInput(image, boxes=boxes)
    aug.transform(tfm)
    assert aug.image.shape == (50, 100, 3) and aug.image.dtype == np.float32
    assert np.array_equal(aug.image[:, 25:], image[25:75, :75].astype(np.float32))  # pasted 25 px to the right
    assert np.allclose(aug.image[:, :25], image.mean())  # the rest: the image's mean, one value for all channels
    # x: (10 / 100 + 0.25) * 100 / 1.0 = 35;  y: (30 / 100 - 0.25) * 50 / 0.5 = 5
    assert aug.kept.tolist() == [0]
    assert np.allclose(aug.boxes, [[35, 5, 65, 35]])


def test_a_box_partly_inside_rejects_the_window_and_no_box_centre_inside_too():
    boxes = np.array([[0.5, 0.2, 0.9, 0.4]])  # x 0.5-0.9: half of it inside a window ending at x 0.7
    assert RandomCropExpand().window(boxes, 100, 100, 0.35, 0.5, 0.7, 1.0) is None  # 50% of its area: rejected
    assert RandomCropExpand().window(boxes, 100, 100, 0.25, 0.5, 0.5, 1.0) is None  # 0% inside, no centre inside
    assert RandomCropExpand().window(boxes, 100, 100, 0.5, 0.5, 1.0, 1.0) is not None  # the whole image


def test_after_twenty_rejections_the_image_is_left_as_it_is():
    np.random.seed(0)
    # a box centred on the image's corner: no window has it strictly inside its image part, every trial fails
    boxes = np.array([[0.0, 0.0, 0.0, 0.0]])
    rejected = sum(isinstance(RandomCropExpand(prob=1.0).get_transform(_image(), boxes), T.NoOpTransform)
                   for _ in range(20))
    assert rejected == 20
    np.random.seed(0)
    boxes = np.array([[0.0, 0.0, 20.0, 20.0]])
    assert not any(isinstance(RandomCropExpand(prob=1.0).get_transform(_image(), boxes), T.NoOpTransform)
                   for _ in range(20))  # a window is nearly always found for a box that can be inside


def test_the_recipe_in_the_mapper_gives_uint8_square_images(make_cfg):
    cfg = make_cfg(size=128)
    cfg.INPUT.MG_AUGMENT_RECIPE = "authors_2023"
    assert [type(a) for a in build_augmentation(cfg, is_train=True)][1:] == [
        PhotometricDistortion, RandomCropExpand, T.RandomFlip, type(build_augmentation(cfg, False)[0]), ToUint8]
    mapper = MutualGuideDatasetMapper(cfg, is_train=True)
    np.random.seed(3)
    image = _image(90)[:, :70]
    boxes = np.array([[5, 5, 40, 50], [30, 40, 65, 85]], np.float32)
    windows = 0
    for _ in range(8):
        aug, tfms = mapper.augment(image, boxes)
        windows += any(isinstance(t, CropExpandTransform) for t in tfms.transforms)
        assert aug.image.shape == (128, 128, 3) and aug.image.dtype == np.uint8
        assert len(aug.boxes) and (aug.boxes >= 0).all() and (aug.boxes <= 128).all()
    assert windows > 0


def test_an_unknown_recipe_is_refused_naming_the_key(make_cfg):
    cfg = make_cfg()
    cfg.INPUT.MG_AUGMENT_RECIPE = "yolox"
    with pytest.raises(ValueError, match=r"INPUT.MG_AUGMENT_RECIPE must be one of paper, authors_2023; got 'yolox'"):
        build_augmentation(cfg, is_train=True)
