"""
What the dataset readers and the dataset check report: one `Problem` per item at fault, naming its file.

An error makes an image unusable (it is left out with DATALOADER.SKIP_BAD_IMAGES, otherwise the run stops);
a fatal error makes the whole dataset unusable (malformed json, no categories...), so nothing can be left out;
a warning is reported and counted, and the run goes on (a box reaching outside its image is clipped).
"""
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["DatasetError", "Problem", "format_problems"]


@dataclass(frozen=True)
class Problem:
    path: str  # the file at fault: an annotation file, a json file or an image
    message: str
    # file_name of the image this problem makes unusable (None: it concerns no single image)
    image: Optional[str] = None
    error: bool = True  # False: a warning
    fatal: bool = False  # the dataset as a whole is unusable: no image can be left out instead

    def __str__(self):
        kind = "warning" if not self.error else "error"
        return f"{kind}: {self.path}: {self.message}"


class DatasetError(ValueError):
    """A dataset cannot be used as it is; the message names every file at fault (or the first ones)."""

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)


def format_problems(problems: List[Problem], limit: Optional[int] = 20) -> str:
    """One line per problem, errors first; with `limit`, the rest is counted."""
    ordered = [p for p in problems if p.error] + [p for p in problems if not p.error]
    shown = ordered if limit is None else ordered[:limit]
    lines = [f"  {p}" for p in shown]
    if len(ordered) > len(shown):
        lines.append(f"  ... and {len(ordered) - len(shown)} more")
    return "\n".join(lines)


# Boxes may overrun their image by this many pixels before it is reported: 0-based VOC files give xmin = 0,
# which detectron2's convention turns into -1.
OVERRUN_TOLERANCE = 1.0


def box_problem(box, width, height):
    """
    What is wrong with an XYXY box (pixels, detectron2's convention) in a `width` x `height` image, as
    (message, is_error), or None. A reversed box is the reader's to report (it knows the file's own terms).
    """
    x0, y0, x1, y1 = box
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return f"box {_fmt(box)} lies entirely outside the {width} x {height} image", True
    if x0 == x1 or y0 == y1:
        return f"box {_fmt(box)} is empty (zero {'width' if x0 == x1 else 'height'}); training drops it", False
    tol = OVERRUN_TOLERANCE
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        return f"box {_fmt(box)} reaches outside the {width} x {height} image; training clips it", False
    return None


def _fmt(box):
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"
