"""
The one resize to the network's input: S x S, aspect ratio not kept, OpenCV's bilinear kernel
(cv2.INTER_LINEAR), as the paper's test transform (`BaseTransform` in data/data_augment.py at fd2c4cc).

Every deterministic resize gives the pixels of `resize_to_input`: the test-time mapper (evaluation,
browse_dataset), the training mapper without INPUT.MG_AUGMENT, the predictor (demo.py, through the test-time
mapper's augmentation `augmentation.plain_resize`), tools/export_model.py's verification images. The model does not resize: it refuses an image that is not S x S. The training augmentation keeps its
random interpolation on purpose (the authors' `preproc_for_test` picks one of five per image): it calls
`resize_image` with the interpolation it drew.
"""
import cv2
import numpy as np

__all__ = ["resize_image", "resize_to_input"]

# The array types cv2.resize takes for a linear kernel; others go through float32.
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def resize_image(image: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """H x W (x C) array -> height x width (x C), in the array's dtype (cv2 drops a trailing channel of size 1:
    it is put back)."""
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out.reshape(out.shape[:2] + image.shape[2:])


def resize_to_input(image: np.ndarray, size: int) -> np.ndarray:
    """H x W x C image (BGR uint8 as cv2 reads it) -> size x size x C, the paper's test transform."""
    if image.dtype.type not in _CV2_DTYPES:
        image = image.astype(np.float32)
    return resize_image(image, size, size, cv2.INTER_LINEAR)
