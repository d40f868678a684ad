"""
The one image decoder of the project: training (mapper.read_image_checked), evaluation, demo.py,
tools/browse_dataset.py and the dataset check (`inspect_image`, which decodes with DATALOADER.CHECK_FULL_DECODE
or when a file's end is missing) all read pixels here, so the same file gives the same array everywhere.

What it does to the file's pixels, and why:
- EXIF orientation applied, as detectron2's read_image does (the annotations' width/height are those of the
  rotated image; image_header.read_image_size gives the same size from the header alone);
- grayscale and palette images to colour (gray repeated in the three channels), as PIL's convert("RGB");
- alpha dropped, not composited over a background: OpenCV's IMREAD_COLOR and detectron2's read_image drop it
  too, so a model trained elsewhere sees the same pixels;
- 16-bit samples scaled to 8 bits by keeping the high byte (>> 8), as OpenCV's IMREAD_COLOR does. detectron2's
  read_image converts a 16-bit grayscale PNG ("I;16") with PIL's convert("RGB"), which clips at 255: an almost
  white image;
- 32-bit integer and floating-point images (TIFF) refused with a message naming the mode: no scaling is right
  for every such file.
"""
import numpy as np
from PIL import Image, ImageOps

from mutual_guide.data.image_header import REFUSED_MODES, ends_with_marker, read_header

__all__ = ["SIXTEEN_BIT_MODES", "inspect_image", "read_image"]

# PIL modes of 16-bit grayscale files (PNG gives "I;16"; older Pillow "I"). 16-bit colour PNGs open as "RGB"
# or "RGBA", PIL keeping the high byte of each sample itself.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_image(path, format="BGR"):
    """
    The image at `path` as an H x W x 3 uint8 array in `format` ("BGR" or "RGB"; other detectron2 formats,
    "L" or "YUV-BT.601", go through detectron2's convert_PIL_to_numpy from the 8-bit colour image).

    Raises FileNotFoundError, OSError for a file PIL cannot decode (truncated, damaged, not an image), and
    ValueError for a pixel format it refuses.
    """
    with Image.open(path) as image:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a damaged EXIF block: detectron2's read_image ignores it as well
            image.load()
        rgb = _to_rgb8(image, path)
    if format == "RGB":
        return np.ascontiguousarray(rgb)
    if format == "BGR":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    from detectron2.data.detection_utils import convert_PIL_to_numpy

    return convert_PIL_to_numpy(Image.fromarray(rgb), format)


def inspect_image(path, full_decode=False):
    """
    What the dataset check needs of one image file: ((width, height) as read_image_size gives it, notes), notes
    being what read_image changes: 16-bit samples, an alpha channel, an EXIF rotation.

    Raises FileNotFoundError, or OSError naming the problem when the file cannot be decoded. Only the header
    and the file's last bytes are read: a JPEG must end with its end-of-image marker (FF D9, trailing zero bytes
    allowed), a PNG with its IEND chunk. A file without its marker is decoded once before it is called truncated,
    so that a complete file with data appended (some cameras do) is not refused. Other formats are checked for
    truncation only with `full_decode` (DATALOADER.CHECK_FULL_DECODE), which decodes every image.
    """
    with open(path, "rb") as f:
        size, orientation, mode, rawmode, info = read_header(f)
        complete = ends_with_marker(f)
    if mode in REFUSED_MODES:  # known from the header: read_image would refuse it
        raise OSError(f"{'floating-point' if mode == 'F' else '32-bit'} image (PIL mode {mode!r}): the decoder "
                      "refuses it; convert it to 8 or 16 bits per sample")
    notes = []
    if mode.startswith("I;16") or mode == "I" or ";16" in rawmode:
        notes.append("16-bit samples: scaled to 8 bits (the high byte, as OpenCV's IMREAD_COLOR does)")
    if mode in ("RGBA", "LA", "PA") or "transparency" in info:
        notes.append(f"alpha channel ({mode}): dropped, not composited (as OpenCV's IMREAD_COLOR does)")
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        notes.append(f"EXIF orientation {orientation}: the image is rotated as the tag says before use; its "
                     f"annotation must give the rotated size, {size[0]} x {size[1]} (width x height)")
    if full_decode or not complete:
        try:
            read_image(path)
        except Exception as e:  # PIL raises OSError, SyntaxError, struct.error... on damaged data
            reason = "truncated: " if not complete else ""
            raise OSError(f"{reason}cannot decode the image ({type(e).__name__}: {e})") from e
    return size, notes


def _to_rgb8(image, path):
    """H x W x 3 uint8 RGB array of a PIL image of any mode."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise ValueError(f"{path}: 32-bit integer image (PIL mode 'I', values {values.min()} .. "
                             f"{values.max()}): convert it to 8 or 16 bits per sample")
        gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in REFUSED_MODES:
        raise ValueError(f"{path}: {'floating-point' if image.mode == 'F' else '32-bit'} image (PIL mode "
                         f"{image.mode!r}): convert it to 8 or 16 bits per sample")
    # "RGBA", "LA", "PA", "P" with transparency: the alpha channel is dropped (see the module's docstring)
    return np.asarray(image.convert("RGB"))
