"""
The one resize to the network's input: S x S, aspect ratio not kept, OpenCV's bilinear kernel
(cv2.INTER_LINEAR), as the seed's test transform (`BaseTransform` in data/data_augment.py at fd2c4cc).

Every deterministic resize goes through `resize_to_input`: the test-time mapper (evaluation, browse_dataset),
the training mapper without INPUT.MG_AUGMENT, the predictor (demo.py), tools/export_model.py's verification
images and the model itself when it is handed an image that is not S x S. The training augmentation keeps its
random interpolation on purpose (the seed's `preproc_for_test` picks one of five per image): it calls
`resize_image` with the interpolation it drew.
"""
import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["resize_image", "resize_tensor_to_input", "resize_to_input"]

# The array types cv2.resize takes for a linear kernel; others go through float32.
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def resize_image(image: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """H x W (x C) array -> height x width (x C), in the array's dtype (cv2 drops a trailing channel of size 1:
    it is put back)."""
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out.reshape(out.shape[:2] + image.shape[2:])


def resize_to_input(image: np.ndarray, size: int) -> np.ndarray:
    """H x W x C image (BGR uint8 as cv2 reads it) -> size x size x C, the seed's test transform."""
    if image.dtype.type not in _CV2_DTYPES:
        image = image.astype(np.float32)
    return resize_image(image, size, size, cv2.INTER_LINEAR)


def resize_tensor_to_input(image: Tensor, size: int) -> Tensor:
    """
    `resize_to_input` for a C x H x W tensor on any device; the result is on the CPU. The pixels go through
    OpenCV on the host rather than through `F.interpolate` on the device: torch's bilinear kernel (float, not
    OpenCV's fixed-point uint8 arithmetic) gives other pixels than the mapper and the predictor (up to 0.75 grey
    level, 0.27 on average, on uint8 images), and the model is to see the same input whichever way the image
    reached it. Only images that are not S x S pay for the host round trip.
    """
    array = image.detach().to("cpu").permute(1, 2, 0).numpy()
    return torch.from_numpy(np.ascontiguousarray(resize_to_input(array, size).transpose(2, 0, 1)))
