"""Labels of crowded boxes are drawn apart from each other and inside the image; thresholds per class."""
import pytest

from mutual_guide.utils.drawing import place_labels


def _overlap(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def test_labels_of_one_box_drawn_three_times_do_not_overlap():
    # a large object boxed three times (as an untrained detector does), and a small one at the image's corner
    boxes = [(40, 40, 200, 200), (42, 38, 198, 205), (38, 44, 203, 199), (0, 0, 12, 12)]
    sizes = [(90, 20), (90, 20), (90, 20), (80, 20)]
    corners = place_labels(boxes, sizes, 256, 256)
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    assert all(0 <= r[0] and 0 <= r[1] and r[2] <= 256 and r[3] <= 256 for r in rects)  # inside the image
    assert all(_overlap(a, b) == 0 for i, a in enumerate(rects) for b in rects[i + 1:])
    # the first label takes its preferred place: above its box, at its left edge
    assert corners[0] == (40, 20)


def test_a_label_avoids_what_is_already_taken_and_overlaps_least_when_it_cannot():
    taken = [(0, 0, 256, 256)]  # nothing free: the first candidate, moved inside the image
    assert place_labels([(10, 50, 60, 90)], [(40, 20)], 256, 256, taken) == [(10, 30)]
    note = (0, 0, 120, 24)  # the corner note
    (x, y), = place_labels([(0, 10, 50, 60)], [(40, 20)], 256, 256, [note])
    assert _overlap((x, y, x + 40, y + 20), note) == 0


def test_one_threshold_per_class():
    import torch

    from detectron2.structures import Boxes, Instances

    from mutual_guide.utils.drawing import above_threshold

    instances = Instances((10, 10), pred_boxes=Boxes(torch.zeros(4, 4)), scores=torch.tensor([0.7, 0.4, 0.3, 0.2]),
                          pred_classes=torch.tensor([0, 0, 1, 1]))
    assert above_threshold(instances, 0.35).scores.tolist() == pytest.approx([0.7, 0.4])
    assert above_threshold(instances, [0.5, 0.25]).scores.tolist() == pytest.approx([0.7, 0.3])
