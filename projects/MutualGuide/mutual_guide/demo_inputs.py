"""
The inputs of demo.py: image files, folders and globs expanded to files, where each drawing goes, images read
with their size checked before decoding, and where a video's drawing goes.
"""
import glob
import os

import cv2
from PIL import Image

from .data.image_header import read_image_size
from .drawing import MAX_DRAWING_SIDE

__all__ = ["IMAGE_SUFFIXES", "VIDEO_CODECS", "expand_inputs", "output_paths", "read_image", "video_output"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}  # output suffix -> cv2.VideoWriter fourcc


def expand_inputs(patterns):
    """
    (image paths, failures) from files, folders and globs: each file once, in a stable order; an input
    matching no image file is a failure (input, reason), and the others are still used.
    """
    paths, seen, failures = [], set(), []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
            found = [f for f in found if f.lower().endswith(IMAGE_SUFFIXES)]
            if not found:
                failures.append((pattern, f"folder holds no image file (looked for {', '.join(IMAGE_SUFFIXES)})"))
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
            if not found:
                failures.append((pattern, "matches no image file"))
        for path in found:
            if os.path.abspath(path) not in seen:
                seen.add(os.path.abspath(path))
                paths.append(path)
    return paths, failures


def output_paths(paths, output_dir):
    """Where each input's drawing goes: its path relative to the inputs' common folder, under `output_dir`."""
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [os.path.join(output_dir, os.path.relpath(p, common)) for p in absolute]


def read_image(path, max_megapixels):
    """The image as BGR uint8 (cv2.IMREAD_COLOR: gray to colour, alpha dropped), its size checked from the header."""
    hint = " (a video? use --video-input)" if os.path.splitext(path)[1].lower() in VIDEO_CODECS else ""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own "decompression bomb" refusal: --max-megapixels decides here
    try:
        width, height = read_image_size(path)
    except OSError as e:
        if hint:
            raise OSError(f"{e}{hint}") from e
        raise
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if width * height > max_megapixels * 1e6:
        raise ValueError(
            f"{width} x {height} pixels ({width * height / 1e6:.0f} megapixels) is over --max-megapixels "
            f"{max_megapixels:g}: decoded, it alone would take {width * height * 3 / 2 ** 30:.1f} GiB. Resize it, or "
            f"give a larger --max-megapixels (the network sees it at INPUT.SIZE and it is drawn at most "
            f"{MAX_DRAWING_SIDE} pixels on its longest side)"
        )
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read the image (missing, not an image, or damaged){hint}")
    return image


def video_output(output, source_name):
    """The video file of --output: itself when it ends in a VIDEO_CODECS suffix, else <output>/<source>.mp4."""
    if os.path.splitext(output)[1].lower() in VIDEO_CODECS:
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(source_name))[0] + ".mp4")
