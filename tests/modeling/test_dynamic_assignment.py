"""The authors' 2023 mutual guidance (RECIPE authors_2023): hand-made cases, then the vectorised rule = the oracle."""
import pytest
import torch

from detectron2.structures import Boxes, Instances

from mutual_guide.modeling.assignment import pad_ground_truth
from mutual_guide.modeling.assignment_stats import assignment_statistics, statistic_names
from mutual_guide.modeling.dynamic_assignment import DynamicMutualGuidanceMatcher, SoftAnchorLabels

C = 6  # classes; background label is C
BOX = [0.0, 0.0, 8.0, 8.0]
FAR = [40.0, 40.0, 48.0, 48.0]
NO_SCORE = -100.0  # sigmoid ~ 0: exp(p / sigma) is exactly 1, the regression quality is the anchor IoU


def strip(height):
    """An anchor [0, 0, 8, h] inside BOX: IoU with BOX is exactly h / 8."""
    return [0.0, 0.0, 8.0, float(height)]


def dynamic_labels(anchors, boxes, classes, pred_boxes=None, logits=None, topk=15):
    anchors = torch.tensor(anchors)
    pred_boxes = anchors if pred_boxes is None else torch.tensor(pred_boxes)
    logits = torch.full((len(anchors), C), NO_SCORE) if logits is None else torch.as_tensor(logits).float()
    return DynamicMutualGuidanceMatcher(C, topk=topk)(
        anchors, torch.tensor([boxes]), torch.tensor([classes]), torch.ones(1, len(boxes), dtype=torch.bool),
        pred_boxes=pred_boxes[None], pred_logits=logits[None],
    )


# ----------------------------------------------------------------------------- by hand
def test_number_of_positives_is_the_truncated_sum_of_the_best_qualities():
    # IoUs 0.875 + 0.75 + 0.5 + 0.25 = 2.375 -> 2 positives, the two best, weighted by their quality
    labels = dynamic_labels([strip(7), strip(6), strip(4), strip(2), FAR], [BOX], [3])
    assert labels.cls_labels.tolist() == [[3, 3, C, C, C]]
    assert labels.cls_weight.tolist() == [[0.875, 0.75, 0.0, 0.0, 0.0]]
    assert labels.reg_mask.tolist() == [[True, True, False, False, False]]
    assert labels.reg_weight.tolist() == [[0.875, 0.75, 0.0, 0.0, 0.0]]
    assert (labels.ignored_class == C).all()  # no ignored anchors
    # only the TOPK best are summed: 0.875 + 0.75 = 1.625 -> 1
    assert dynamic_labels([strip(7), strip(6), strip(4), strip(2)], [BOX], [3], topk=2).cls_labels.tolist() == [
        [3, C, C, C]
    ]


def test_at_least_one_positive_unless_nothing_overlaps():
    labels = dynamic_labels([strip(2), FAR], [BOX], [1])  # sum 0.25 -> max(1, 0) = 1
    assert labels.cls_labels.tolist() == [[1, C]] and labels.reg_weight.tolist() == [[0.25, 0.0]]
    labels = dynamic_labels([FAR], [BOX], [1])  # nothing above 0: no positive
    assert labels.cls_labels.tolist() == [[C]] and not labels.reg_mask.any()


def test_column_maxima_only_and_no_forced_best_anchor():
    # box 1 = [0, 0, 8, 7] overlaps both anchors more than box 0 (1 > 0.875, 6/7 > 0.75): box 0 keeps nothing and,
    # unlike the paper's rule, gets no anchor; box 1 sums 1 + 6/7 -> 1 positive
    labels = dynamic_labels([strip(7), strip(6), FAR], [BOX, strip(7)], [2, 4])
    assert labels.cls_labels.tolist() == [[4, C, C]]
    assert labels.reg_mask.tolist() == [[True, False, False]] and labels.reg_idx[0, 0] == 1
    stats = dict(zip(statistic_names(), assignment_statistics(labels, torch.tensor([[BOX, strip(7)]]),
                                                             torch.ones(1, 2, dtype=torch.bool), C).tolist()))
    assert stats["assignment/all/objects_without_cls"] == 0.5
    assert stats["assignment/all/reg_positives_per_object"] == 0.5


def test_regression_quality_weights_the_anchor_iou_by_the_score_capped_at_1():
    # class 3 scored 1 at anchor 1: 0.75 * exp(1 / 2) = 1.24 -> 1, above anchor 0's 0.875: regression picks
    # anchor 1 (weight 1), classification (predicted boxes = anchors, no score) picks anchor 0
    logits = torch.full((3, C), NO_SCORE)
    logits[1, 3] = 100.0
    labels = dynamic_labels([strip(7), strip(6), FAR], [BOX], [3], logits=logits)
    assert labels.cls_labels.tolist() == [[3, C, C]] and labels.cls_weight[0, 0] == 0.875
    assert labels.reg_mask.tolist() == [[False, True, False]] and labels.reg_weight[0, 1] == 1.0
    # a score of 0.5 on class 3 at anchor 0: 0.5 * exp(0.25) = 0.642
    logits = torch.full((2, C), NO_SCORE)
    logits[0, 3] = 0.0
    labels = dynamic_labels([strip(4), FAR], [BOX], [3], logits=logits)
    expected = 0.5 * torch.exp(torch.tensor(0.5) / 2)
    assert labels.reg_weight[0, 0] == pytest.approx(float(expected), abs=2.5e-7)


def test_classification_quality_is_the_predicted_iou():
    # identical anchors (IoU 0.5 each, sum 1 -> 1 regression positive, the lower anchor index); predicted boxes
    # of IoU 0.5 and 0.75 (sum 1.25 -> 1 classification positive, the second anchor)
    anchors = [strip(4), strip(4)]
    labels = dynamic_labels(anchors, [BOX], [0], pred_boxes=[strip(4), strip(6)])
    assert labels.cls_labels.tolist() == [[C, 0]] and labels.cls_weight.tolist() == [[0.0, 0.75]]
    assert labels.reg_mask.tolist() == [[True, False]]


def test_ties_between_boxes_go_to_the_lower_box_index():
    labels = dynamic_labels([strip(8), FAR], [BOX, BOX], [2, 5])
    assert labels.cls_labels.tolist() == [[2, C]] and labels.reg_idx[0, 0] == 0 and labels.cls_idx[0, 0] == 0


def test_soft_weight_is_the_quality_rounded_as_the_authors_shift_it():
    # (q + 3) - 3 in float32 is not q: the weight carries the authors' rounding
    labels = dynamic_labels([strip(0.8), FAR], [BOX], [1])
    q = torch.tensor(0.8) / 8
    assert labels.cls_weight[0, 0] == (q + 3.0) - 3.0 != q


def test_empty_images_are_all_negative():
    anchors = torch.tensor([strip(8), strip(4)])
    matcher = DynamicMutualGuidanceMatcher(C)
    pred = dict(pred_boxes=anchors.expand(2, 2, 4), pred_logits=torch.zeros(2, 2, C))
    labels = matcher(anchors, torch.tensor([[BOX], [[0.0] * 4]]), torch.tensor([[1], [0]]),
                     torch.tensor([[True], [False]]), **pred)
    assert labels.cls_labels.tolist() == [[1, C], [C, C]]
    assert labels.cls_weight[1].tolist() == [0.0, 0.0] and not labels.reg_mask[1].any()
    labels = matcher(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                     torch.zeros(2, 0, dtype=torch.bool), **pred)
    assert isinstance(labels, SoftAnchorLabels) and (labels.cls_labels == C).all() and not labels.reg_mask.any()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="topk must be at least 1"):
        DynamicMutualGuidanceMatcher(C, topk=0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        DynamicMutualGuidanceMatcher(C, sigma=0.0)
    gt = (torch.tensor([strip(8)]), torch.tensor([[BOX]]), torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs pred_boxes and pred_logits"):
        DynamicMutualGuidanceMatcher(C)(*gt)
    with pytest.raises(ValueError, match="pred_logits have 5 classes"):
        DynamicMutualGuidanceMatcher(C)(*gt, pred_boxes=torch.tensor([[BOX]]), pred_logits=torch.zeros(1, 1, 5))


# ----------------------------------------------------------------------------- vectorised == oracle
def test_vectorised_equals_oracle(random_batch, oracle):
    """Random batches: many boxes, one box, none; integer boxes (ties between anchors), duplicated boxes (ties
    between boxes), and a small TOPK. Labels, owners and weights must be identical."""
    cases = [(0, 8, False, False, 15), (1, 1, False, False, 15), (2, 0, False, False, 15), (3, 12, True, False, 15),
             (4, 6, True, True, 15), (5, 30, False, True, 4), (6, 5, True, True, 1),
             (7, 10, True, False, 1)]
    for seed, max_boxes, integer, duplicates, topk in cases:
        anchors, boxes, classes, pred, logits = random_batch(seed, max_boxes, integer, duplicates)
        if integer:  # equal scores too: ties in the regression quality, also at the n-th place
            logits = torch.zeros_like(logits) if topk == 1 else logits.round()
        instances = [Instances((64, 64), gt_boxes=Boxes(b), gt_classes=c) for b, c in zip(boxes, classes)]
        gt_boxes, gt_classes, valid = pad_ground_truth(instances)
        matcher = DynamicMutualGuidanceMatcher(logits.shape[-1], topk=topk)
        labels = matcher(anchors, gt_boxes, gt_classes, valid, pred, logits)
        given = matcher(anchors, gt_boxes, gt_classes, valid, pred, logits, counts=[len(b) for b in boxes])
        expected = oracle.oracle_label_anchors_2023(anchors, boxes, classes, logits.shape[-1], pred, logits, topk)
        case = f"case {(seed, max_boxes, integer, duplicates, topk)}"
        assert torch.equal(labels.cls_labels, expected["cls_labels"]), case
        assert torch.equal(labels.reg_mask, expected["reg_mask"]), case
        assert torch.equal(labels.cls_weight, expected["cls_weight"]), case
        assert torch.equal(labels.reg_weight, expected["reg_weight"]), case
        cls_pos = labels.cls_labels < logits.shape[-1]
        assert torch.equal(labels.cls_idx[cls_pos], expected["cls_idx"][cls_pos]), case
        assert torch.equal(labels.reg_idx[labels.reg_mask], expected["reg_idx"][labels.reg_mask]), case
        for field in SoftAnchorLabels._fields:
            assert torch.equal(getattr(labels, field), getattr(given, field)), (case, field)
        if max_boxes >= 8:
            assert labels.reg_mask.sum() > (labels.reg_mask.any(-1)).sum(), "dynamic k gave every box 1 anchor"
