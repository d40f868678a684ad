import pytest
import torch

from detectron2.structures import Boxes, Instances

from mutual_guide.modeling.assignment import (
    AnchorLabels,
    BestAnchorIoUMatcher,
    MutualGuidanceMatcher,
    batched_pairwise_iou,
    build_anchor_matcher,
    pad_ground_truth,
)

C = 6  # classes in the hand-made cases; background label is C
BOX = [0.0, 0.0, 10.0, 10.0]


def strip(height):
    """An anchor [0, 0, 10, h] inside BOX: IoU with BOX is exactly h / 10."""
    return [0.0, 0.0, 10.0, height]


def iou_labels(anchors, boxes, classes):
    gt_boxes = torch.tensor([boxes])
    return BestAnchorIoUMatcher((0.4, 0.5), C)(
        torch.tensor(anchors), gt_boxes, torch.tensor([classes]), torch.ones(1, len(boxes), dtype=torch.bool)
    )


def mutual_labels(anchors, boxes, classes, pred_boxes, logits=None):
    anchors = torch.tensor(anchors)
    if logits is None:
        logits = torch.zeros(len(anchors), C)
    return MutualGuidanceMatcher((0.4, 0.5), C)(
        anchors, torch.tensor([boxes]), torch.tensor([classes]), torch.ones(1, len(boxes), dtype=torch.bool),
        pred_boxes=torch.tensor([pred_boxes]), pred_logits=torch.as_tensor(logits, dtype=torch.float)[None],
    )


# ----------------------------------------------------------------------------- IoU baseline, by hand
def test_iou_forced_best_anchor():
    # best IoU is 0.3 < 0.4, still positive: each box keeps its best anchor
    labels = iou_labels([strip(3), strip(2), [20.0, 20.0, 30.0, 30.0]], [BOX], [4])
    assert labels.cls_labels.tolist() == [[4, C, C]]
    assert labels.reg_mask.tolist() == [[True, False, False]]
    assert labels.reg_idx[0, 0] == 0


def test_iou_ignore_band():
    labels = iou_labels([strip(8), strip(4.5), strip(3), strip(6), strip(4)], [BOX], [1])
    assert labels.cls_labels.tolist() == [[1, -1, C, 1, -1]]
    assert labels.reg_mask.tolist() == [[True, False, False, True, False]]
    assert labels.ignored_class.tolist() == [[C, 1, C, C, 1]]


def test_iou_each_anchor_takes_its_best_box_lower_index_on_ties():
    # anchor 0 overlaps box 1 more; anchor 1 is equally good for both boxes (identical boxes 1 and 2)
    boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 8.0]]
    anchors = [strip(7.5), [0.0, 0.0, 10.0, 8.0], [40.0, 40.0, 50.0, 50.0], strip(10)]
    labels = iou_labels(anchors, boxes, [0, 1, 2])
    # anchor 1 is the best anchor of both boxes 1 and 2: the authors' loop lets the later box 2 keep it
    assert labels.cls_labels.tolist() == [[1, 2, C, 0]]


def test_iou_shared_best_anchor_goes_to_later_box():
    labels = iou_labels([strip(10), [50.0, 50.0, 60.0, 60.0]], [BOX, BOX], [3, 5])
    assert labels.cls_labels.tolist() == [[5, C]]
    assert labels.reg_idx[0, 0] == 1


def test_matcher_alone_on_batched_matrix():
    iou = torch.tensor([[[0.3, 0.45, 0.7]], [[0.0, 0.0, 0.0]]])
    matches, match_labels = BestAnchorIoUMatcher((0.4, 0.5), C).match(iou, torch.tensor([[True], [False]]))
    assert match_labels.tolist() == [[0, -1, 1], [0, 0, 0]]
    assert matches[0].tolist() == [0, 0, 0]


# ----------------------------------------------------------------------------- mutual guidance, by hand
def test_localize_to_classify_picks_anchors_by_predicted_iou():
    # anchor IoU 0.8, 0.6, 0.45, 0.3 -> n_pos 2, n_ign 3; predicted IoU 0.2, 0.9, 0.1, 1.0
    anchors = [strip(8), strip(6), strip(4.5), strip(3)]
    preds = [strip(2), strip(9), strip(1), strip(10)]
    labels = mutual_labels(anchors, [BOX], [2], preds)
    assert labels.cls_labels.tolist() == [[-1, 2, C, 2]]
    assert labels.ignored_class.tolist() == [[2, C, C, C]]
    # regression still by anchor IoU ** ((2 - 0.5) / 2): the two best anchors
    assert labels.reg_mask.tolist() == [[True, True, False, False]]


def test_classify_to_localize_picks_anchors_by_class_probability():
    # anchor IoU 0.8, 0.6, 0.5, 0.3 -> n_pos 3. A confident anchor 3 (p ~ 1) has quality 0.3 ** 0.5 = 0.548,
    # more than anchor 2's 0.5 ** 1 (p ~ 0): it regresses instead.
    anchors = [strip(8), strip(6), strip(5), strip(3)]
    logits = torch.full((4, C), -20.0)
    logits[3, 1] = 20.0
    labels = mutual_labels(anchors, [BOX], [1], anchors, logits)
    assert labels.reg_mask.tolist() == [[True, True, False, True]]
    assert labels.cls_labels.tolist() == [[1, 1, 1, C]]


def test_top_n_ties_go_to_lower_anchor_index():
    # every prediction has IoU 0.5: the first anchor is forced (best), then the lower index wins the tie
    anchors = [strip(3), strip(6), strip(8)]
    labels = mutual_labels(anchors, [BOX], [0], [strip(5)] * 3)
    assert labels.cls_labels.tolist() == [[0, 0, C]]


def test_top_n_marks_break_ties_by_lower_index():
    from mutual_guide.modeling.assignment import _mark_top_n_

    scores = torch.tensor([[0.5, 0.7, 0.5, 0.5, 0.7, 0.0], [0.0, 0.0, 0.0, 0.2, 0.0, 0.0]])
    marked = _mark_top_n_(scores.clone(), [(torch.tensor([3, 3]), 2.0), (torch.tensor([2, 0]), 3.0)], k=3)
    # row 0: 0.7, 0.7 (anchors 1, 4) then the first 0.5 (anchor 0); row 1: 0.2, then zeros 0 and 1
    assert marked.tolist() == [[2.0, 3.0, 0.5, 0.5, 3.0, 0.0], [2.0, 2.0, 0.0, 2.0, 0.0, 0.0]]
    # n = 0 marks nothing; k = 0 leaves the scores as they are
    assert torch.equal(_mark_top_n_(scores.clone(), [(torch.tensor([0, 0]), 2.0)], k=3), scores)
    assert torch.equal(_mark_top_n_(scores.clone(), [(torch.tensor([0, 0]), 2.0)], k=0), scores)


def test_column_max_suppression():
    # anchor 1 overlaps box 1 (0.917) slightly more than box 0 (0.909): it is kept only for box 1, so box 0
    # counts a single positive. Without suppression box 0 would count 3 and take every anchor.
    boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0]]
    anchors = [strip(10), strip(11), strip(12)]
    labels = mutual_labels(anchors, boxes, [3, 4], anchors)
    assert labels.cls_labels.tolist() == [[3, 4, 4]]
    assert labels.reg_idx[0].tolist() == [0, 1, 1]


def test_mutual_ties_between_boxes_go_to_lower_box_index():
    anchors = [strip(10), [50.0, 50.0, 60.0, 60.0]]
    labels = mutual_labels(anchors, [BOX, BOX], [2, 5], anchors)
    assert labels.cls_labels.tolist() == [[2, C]]
    assert labels.reg_idx[0, 0] == 0 and labels.cls_idx[0, 0] == 0


@pytest.mark.parametrize("mutual", [True, False])
def test_padded_boxes_never_assigned(mutual):
    anchors = torch.tensor([strip(10), strip(8), [20.0, 20.0, 30.0, 30.0], [20.0, 20.0, 30.0, 29.0]])
    # padding rows hold garbage that matches anchors 2 and 3 well
    gt_boxes = torch.tensor([[BOX, [20.0, 20.0, 30.0, 30.0], [20.0, 20.0, 30.0, 29.5]]])
    valid = torch.tensor([[True, False, False]])
    kwargs = dict(pred_boxes=anchors[None], pred_logits=torch.zeros(1, 4, C))
    matcher = build_anchor_matcher(mutual, (0.4, 0.5), C)
    labels = matcher(anchors, gt_boxes, torch.tensor([[1, 2, 3]]), valid, **kwargs)
    alone = matcher(anchors, gt_boxes[:, :1], torch.tensor([[1]]), valid[:, :1], **kwargs)
    assert labels.cls_labels.tolist() == [[1, 1, C, C]]
    assert labels.cls_labels.tolist() == alone.cls_labels.tolist()
    assert labels.reg_mask.tolist() == [[True, True, False, False]]
    assert (labels.reg_idx[labels.reg_mask] == 0).all()


@pytest.mark.parametrize("mutual", [True, False])
def test_empty_image_in_batch_is_all_negative(mutual):
    anchors = torch.tensor([strip(10), strip(8), [20.0, 20.0, 30.0, 30.0]])
    gt_boxes = torch.tensor([[BOX], [[0.0] * 4]])
    valid = torch.tensor([[True], [False]])
    labels = build_anchor_matcher(mutual, (0.4, 0.5), C)(
        anchors, gt_boxes, torch.tensor([[1], [0]]), valid, pred_boxes=anchors.expand(2, 3, 4),
        pred_logits=torch.zeros(2, 3, C),
    )
    assert labels.cls_labels.tolist() == [[1, 1, C], [C, C, C]]
    assert labels.reg_mask.tolist() == [[True, True, False], [False, False, False]]


@pytest.mark.parametrize("mutual", [True, False])
def test_empty_batch_is_all_negative(mutual):
    anchors = torch.tensor([strip(10), strip(8)])
    labels = build_anchor_matcher(mutual, (0.4, 0.5), C)(
        anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool),
        pred_boxes=anchors.expand(2, 2, 4), pred_logits=torch.zeros(2, 2, C),
    )
    assert isinstance(labels, AnchorLabels)
    assert labels.cls_labels.tolist() == [[C, C], [C, C]]
    assert not labels.reg_mask.any()


def test_mutual_guidance_needs_predictions_of_its_classes():
    gt = (torch.tensor([strip(10)]), torch.tensor([[BOX]]), torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool))
    matcher = MutualGuidanceMatcher((0.4, 0.5), C)
    with pytest.raises(ValueError, match="needs pred_boxes and pred_logits"):
        matcher(*gt)
    with pytest.raises(ValueError, match="pred_logits have 5 classes, the matcher was built for 6"):
        matcher(*gt, pred_boxes=torch.tensor([[BOX]]), pred_logits=torch.zeros(1, 1, 5))
    # the baseline reads no prediction
    assert BestAnchorIoUMatcher((0.4, 0.5), C)(*gt).cls_labels.tolist() == [[1]]


def test_counts_from_the_host_label_as_counts_read_from_valid(random_batch):
    # the trainer hands over each image's number of boxes (known on the host) so that nothing is read back
    anchors, boxes, classes, pred, logits = random_batch(3, 8)
    instances = [Instances((64, 64), gt_boxes=Boxes(b), gt_classes=c) for b, c in zip(boxes, classes)]
    gt_boxes, gt_classes, valid = pad_ground_truth(instances)
    counts = [len(b) for b in boxes]
    assert len(set(counts)) > 2  # padding of different lengths, and an image without boxes
    matcher = MutualGuidanceMatcher((0.4, 0.5), logits.shape[-1])
    read = matcher(anchors, gt_boxes, gt_classes, valid, pred, logits)
    given = matcher(anchors, gt_boxes, gt_classes, valid, pred, logits, counts=counts)
    for field in AnchorLabels._fields:
        assert torch.equal(getattr(read, field), getattr(given, field)), field


def test_counts_that_do_not_fit_the_ground_truth_are_refused():
    gt = (torch.tensor([strip(10)]), torch.tensor([[BOX, BOX]]), torch.tensor([[1, 2]]))
    predictions = {"pred_boxes": torch.tensor([[BOX]]), "pred_logits": torch.zeros(1, 1, C)}
    matcher = MutualGuidanceMatcher((0.4, 0.5), C)
    with pytest.raises(ValueError, match=r"counts \[3\] do not fit ground truth of 1 images padded to 2 boxes"):
        matcher(*gt, torch.ones(1, 2, dtype=torch.bool), counts=[3], **predictions)
    with pytest.raises(ValueError, match="valid must mark each image's first boxes"):
        matcher(*gt, torch.tensor([[False, True]]), **predictions)


@pytest.mark.parametrize("thresholds", [(0.5, 0.4), (0.4,), (-0.1, 0.5), (0.4, 1.5)])
def test_bad_thresholds_are_refused_with_their_value(thresholds):
    with pytest.raises(ValueError, match=r"IoU thresholds must be \[low, high\]"):
        build_anchor_matcher(True, thresholds, C)


# ----------------------------------------------------------------------------- helpers
def test_pad_ground_truth():
    a = Instances((32, 32), gt_boxes=Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]])), gt_classes=torch.tensor([7]))
    b = Instances((32, 32), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    boxes, classes, valid = pad_ground_truth([b, a])
    assert boxes.shape == (2, 1, 4) and boxes[1, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert classes.tolist() == [[0], [7]] and valid.tolist() == [[False], [True]]
    boxes, classes, valid = pad_ground_truth([b, b])
    assert boxes.shape == (2, 0, 4) and classes.shape == (2, 0) and valid.shape == (2, 0)


def test_batched_iou_matches_detectron2_bitwise(random_boxes):
    from detectron2.structures import pairwise_iou

    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(2, 5, 64, g)
    others = random_boxes(2, 30, 64, g)
    iou = batched_pairwise_iou(boxes, others)
    for i in range(2):
        assert torch.equal(iou[i], pairwise_iou(Boxes(boxes[i]), Boxes(others[i])))


# ----------------------------------------------------------------------------- vectorised == oracle
def assert_same_labels(labels: AnchorLabels, expected):
    assert torch.equal(labels.cls_labels, expected["cls_labels"])
    assert torch.equal(labels.ignored_class, expected["ignored_class"])
    assert torch.equal(labels.reg_mask, expected["reg_mask"])
    assert torch.equal(labels.reg_idx[labels.reg_mask], expected["reg_idx"][expected["reg_mask"]])
    assigned = expected["cls_idx"] >= 0
    assert torch.equal(labels.cls_idx[assigned], expected["cls_idx"][assigned])


# (seed, max_boxes, integer, duplicates): no box, one, several, many; integer boxes tie anchors, duplicates tie boxes
ORACLE_CASES = [(0, 0, False, False), (1, 1, False, False), (2, 3, False, False), (3, 8, False, False),
                (4, 12, False, False), (5, 6, True, False), (6, 8, True, True), (7, 5, False, True)]


@pytest.mark.parametrize("mutual", [True, False])
def test_vectorised_equals_oracle(mutual, labelled_batch):
    for seed, max_boxes, integer, duplicates in ORACLE_CASES:
        (*_, logits), _, labels, expected = labelled_batch(seed, max_boxes, mutual, integer, duplicates)
        num_classes = logits.shape[-1]
        try:
            assert_same_labels(labels, expected)
        except AssertionError as e:
            raise AssertionError(f"case seed={seed} max_boxes={max_boxes} integer={integer} "
                                 f"duplicates={duplicates}") from e
        if max_boxes:
            assert (labels.cls_labels[0] < num_classes).any()  # the comparison is not vacuous
