"""One resize to the network size: every deterministic path gives the network the same pixels of an image."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.structures import BoxMode

from mutual_guide.data import MutualGuideDatasetMapper
from mutual_guide.data.resize import resize_to_input
from mutual_guide.engine.predictor import MutualGuidePredictor
from mutual_guide.modeling.batching import batch_images

SIZE = 64


@pytest.fixture
def photo(tmp_path):
    """A 50 x 80 BGR image with fine detail (noise on a gradient), where interpolation kernels disagree."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 80)[None, :, None]
    image = np.clip(ramp + rng.normal(0, 30, (50, 80, 3)), 0, 255).astype(np.uint8)
    path = str(tmp_path / "photo.png")
    cv2.imwrite(path, image)
    return path


class _Recorder:
    """Stands for the model in the predictor and keeps the image tensor it is handed."""

    def eval(self):
        return self

    def __call__(self, batched_inputs):
        self.image = batched_inputs[0]["image"]
        return [{"instances": None}]


def test_every_path_gives_the_network_the_same_pixels(photo, load_tool, make_cfg):
    cfg = make_cfg(size=SIZE, opts=["INPUT.MG_AUGMENT", False])
    original = cv2.imread(photo)
    expected = resize_to_input(original, SIZE)
    assert expected.shape == (SIZE, SIZE, 3) and expected.dtype == np.uint8
    record = {"file_name": photo, "image_id": 0, "height": 50, "width": 80,
              "annotations": [{"bbox": [10, 5, 60, 45], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1}]}

    def hwc(tensor):
        return tensor.permute(1, 2, 0).numpy()

    seen = {
        "evaluation (test mapper)": hwc(MutualGuideDatasetMapper(cfg, is_train=False)(record)["image"]),
        "training without MG_AUGMENT": hwc(MutualGuideDatasetMapper(cfg, is_train=True)(record)["image"]),
        "export_model.py --verify": hwc(load_tool("export_model").read_images([photo], SIZE)[0]),
    }
    predictor = MutualGuidePredictor(cfg, model=_Recorder())
    predictor(original)
    seen["predictor (demo.py)"] = hwc(predictor.model.image)
    for path, pixels in seen.items():
        np.testing.assert_array_equal(pixels, expected, err_msg=path)

    # the comparison can fail: torch's bilinear kernel and OpenCV's nearest give other pixels on this image
    torch_bilinear = F.interpolate(torch.from_numpy(original).permute(2, 0, 1)[None].float(), size=(SIZE, SIZE),
                                   mode="bilinear", align_corners=False)[0].round().byte()
    assert not np.array_equal(hwc(torch_bilinear), expected)
    assert not np.array_equal(cv2.resize(original, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST), expected)


def test_the_model_refuses_an_image_of_another_size_naming_its_file():
    """Resizing is the mapper's and the predictor's: the model takes S x S images only."""
    square = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    assert batch_images([{"image": square}], SIZE, torch.device("cpu")).shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"Image 'a.jpg' reaches the detector as \(50, 80\); it takes INPUT.SIZE"):
        batch_images([{"image": square}, {"image": torch.zeros(3, 50, 80), "file_name": "a.jpg"}], SIZE,
                     torch.device("cpu"))
