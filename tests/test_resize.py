"""One resize to the network size: every deterministic path gives the network the same pixels of an image."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.structures import BoxMode

from mutual_guide.data import MutualGuideDatasetMapper
from mutual_guide.data.resize import resize_tensor_to_input, resize_to_input
from mutual_guide.inputs import batch_images
from mutual_guide.predictor import MutualGuidePredictor

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


def test_every_path_gives_the_network_the_same_pixels(photo, load_tool, cfg_factory):
    cfg = cfg_factory(size=SIZE)
    cfg.INPUT.MG_AUGMENT = False
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
        "the model, given the raw image": hwc(
            batch_images([{"image": torch.as_tensor(original.transpose(2, 0, 1).copy())}], SIZE, torch.device("cpu"))[0]
        ),
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


def test_model_resize_of_a_tensor_keeps_device_dtype_and_channels():
    """Float and single-channel tensors go through the same kernel (cv2 drops a channel of size 1: put back)."""
    image = torch.rand(1, 30, 40) * 255
    out = resize_tensor_to_input(image, SIZE)
    assert out.shape == (1, SIZE, SIZE) and out.dtype == torch.float32
    expected = cv2.resize(image[0].numpy(), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out[0].numpy(), expected)
    as_int64 = resize_tensor_to_input(torch.full((3, 30, 40), 7, dtype=torch.int64), SIZE)  # not a cv2 type
    assert as_int64.dtype == torch.float32 and bool((as_int64 == 7).all())
