"""
data/image_io.read_image is the one decoder: the same file gives the same array through the training mapper
(read_image_checked), demo.py, tools/browse_dataset.py and the dataset check, whatever its pixel format:
16-bit PNG (the high byte, as OpenCV), RGBA (alpha dropped), grayscale JPEG (gray in every channel), and an
EXIF-rotated JPEG (rotated, as detectron2 does, and of the size the check reads from the header).
"""
import cv2
import numpy as np
import pytest
from PIL import Image

from detectron2.data import detection_utils

import demo
from mutual_guide.data.image_header import read_image_size
from mutual_guide.data.image_io import inspect_image, read_image
from mutual_guide.data.mapper import MutualGuideDatasetMapper, read_image_checked

EXIF_ORIENTATION = 274


def _gradient(h, w, channels, dtype, top):
    """A ramp over the whole range of `dtype` up to `top`, different in every channel."""
    values = np.linspace(0, top, h * w * channels).reshape(h, w, channels)
    return np.ascontiguousarray(values[..., ::-1] if channels > 1 else values[..., 0]).astype(dtype)


@pytest.fixture
def image_files(tmp_path):
    """{kind: (path, the BGR array every reader must give)}."""
    files = {}
    colour16 = _gradient(48, 64, 3, np.uint16, 65535)
    cv2.imwrite(str(tmp_path / "colour16.png"), colour16)
    files["colour16"] = (tmp_path / "colour16.png", (colour16 >> 8).astype(np.uint8))
    gray16 = _gradient(48, 64, 1, np.uint16, 65535)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray16)
    files["gray16"] = (tmp_path / "gray16.png", np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, axis=2))
    rgba = _gradient(48, 64, 4, np.uint8, 255)
    rgba[:24, :, 3] = 0  # half transparent: the colour underneath stays
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)  # cv2 writes BGRA
    files["rgba"] = (tmp_path / "rgba.png", rgba[..., :3])
    gray = _gradient(48, 64, 1, np.uint8, 255)
    Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "gray.jpg"))  # the JPEG's own (lossy) values
    files["gray_jpeg"] = (tmp_path / "gray.jpg", np.repeat(decoded[..., None], 3, axis=2))
    # stored 64 wide and 48 high; orientation 6 says "rotate 90 degrees clockwise to display"
    stored = _gradient(48, 64, 3, np.uint8, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(tmp_path / "exif6.jpg", quality=95, exif=exif)
    decoded = np.asarray(Image.open(tmp_path / "exif6.jpg").convert("RGB"))
    files["exif6"] = (tmp_path / "exif6.jpg", np.ascontiguousarray(np.rot90(decoded, k=-1)[..., ::-1]))
    return files


def test_every_path_gives_the_same_pixels(image_files, load_tool):
    browse = load_tool("browse_dataset")
    for kind, (path, expected) in image_files.items():
        path = str(path)
        decoded = read_image(path, format="BGR")
        assert decoded.dtype == np.uint8 and decoded.shape == expected.shape, kind
        assert np.array_equal(decoded, expected), kind
        assert np.array_equal(read_image(path, format="RGB"), expected[..., ::-1]), kind
        assert np.array_equal(read_image_checked(path, "BGR"), expected), kind  # the mapper (train, evaluation)
        assert np.array_equal(demo.read_image(path, max_megapixels=150), expected), kind
        shown, _, _ = browse.as_loaded({"file_name": path, "annotations": []}, "RGB")
        assert np.array_equal(shown, expected[..., ::-1]), kind
        # the check's full decode sees the same image, and its header size is the decoded one
        height, width = expected.shape[:2]
        assert read_image_size(path) == (width, height), kind
        assert inspect_image(path, full_decode=True)[0] == (width, height), kind


def test_the_sixteen_bit_and_exif_files_against_opencv_and_detectron2(image_files):
    # 16 bits and alpha: what OpenCV's IMREAD_COLOR gives, to the last value
    for kind in ("colour16", "gray16", "rgba"):
        path, expected = image_files[kind]
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_COLOR), expected), kind
    # detectron2's read_image clips a 16-bit grayscale PNG at 255: the ramp's upper 255/256 come out white
    clipped = detection_utils.read_image(str(image_files["gray16"][0]), format="BGR")
    assert (clipped == 255).mean() > 0.99 and image_files["gray16"][1].mean() == pytest.approx(127.5, abs=1)
    # EXIF rotation: detectron2's own result (the annotations' width and height are the rotated image's)
    path, expected = image_files["exif6"]
    assert expected.shape == (64, 48, 3)
    assert np.array_equal(detection_utils.read_image(str(path), format="BGR"), expected)


def test_the_mapper_accepts_the_rotated_size_the_check_reads(image_files):
    path, expected = image_files["exif6"]
    width, height = read_image_size(str(path))
    mapper = MutualGuideDatasetMapper(False, augmentations=[], image_format="BGR", min_box_side_ratio=0.0, size=32)
    out = mapper({"file_name": str(path), "width": width, "height": height, "image_id": 0})
    assert (out["height"], out["width"]) == expected.shape[:2] == (64, 48)
    assert tuple(out["image"].shape) == (3, 32, 32)
    # the stored (unrotated) size is refused by detectron2's size check, as the dataset check would report it
    with pytest.raises(Exception, match="Mismatched image shape"):
        mapper({"file_name": str(path), "width": 64, "height": 48, "image_id": 0})


def test_a_floating_point_image_is_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "depth.tif")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"depth\.tif: floating-point image \(PIL mode 'F'\)"):
        read_image(path)
    with pytest.raises(OSError, match=r"Cannot read image file .*depth\.tif: ValueError: .*floating-point"):
        read_image_checked(path, "BGR")
    # the check knows it from the header, without decoding
    with pytest.raises(OSError, match=r"floating-point image \(PIL mode 'F'\): the decoder refuses it"):
        inspect_image(path)
