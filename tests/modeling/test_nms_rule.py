"""MODEL.MUTUAL_GUIDE.NMS_RULE "class_agnostic": the test-time selection of the authors' code at 108b4a8, against a
plain re-statement of their utils/box/detection.py post_process and test.py's per-class split."""
import pytest
import torch
import torchvision

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import pairwise_iou, Boxes

from mutual_guide.modeling.postprocessing import select_detections

SIZE, THRESH, NMS = 64, 0.05, 0.5


def inputs(seed, anchors=60, classes=4):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(anchors, 2, generator=g) * SIZE
    sides = 8 + torch.rand(anchors, 2, generator=g) * 16
    anchor_boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=1)
    logits = torch.randn(1, anchors, classes, generator=g) * 2 - 2
    deltas = torch.randn(1, anchors, 4, generator=g) * 0.3
    return logits, deltas, anchor_boxes


def authors_rule(logits, deltas, anchor_boxes, transform):
    """One image: best score > threshold, one NMS on it, then every class above the threshold of a kept box."""
    boxes = transform.apply_deltas(deltas[0], anchor_boxes).clamp(0, SIZE)
    conf = logits[0].sigmoid()
    keep = conf.max(1)[0] > THRESH
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, conf = boxes[keep], conf[keep]
    kept = torchvision.ops.nms(boxes, conf.max(1)[0], NMS)
    out = []
    for j in range(conf.shape[1]):
        for k in kept.tolist():
            if conf[k, j] > THRESH:
                out.append((j, round(conf[k, j].item(), 6), tuple(round(v, 3) for v in boxes[k].tolist())))
    return sorted(out)


@pytest.mark.parametrize("seed", range(5))
def test_class_agnostic_rule_is_the_authors_selection(seed):
    logits, deltas, anchor_boxes = inputs(seed)
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    (result,) = select_detections(
        logits, deltas, anchor_boxes, transform, SIZE, [len(anchor_boxes)], score_thresh=THRESH, nms_thresh=NMS,
        topk_candidates=0, max_detections=10_000, nms_rule="class_agnostic",
    )
    ours = sorted(
        (c, round(s, 6), tuple(round(v, 3) for v in b))
        for c, s, b in zip(result.pred_classes.tolist(), result.scores.tolist(), result.pred_boxes.tensor.tolist())
    )
    expected = authors_rule(logits, deltas, anchor_boxes, transform)
    assert ours == expected and len(ours) > 0
    assert torch.all(result.scores[:-1] >= result.scores[1:])  # decreasing score
    per_class = select_detections(
        logits, deltas, anchor_boxes, transform, SIZE, [len(anchor_boxes)], score_thresh=THRESH, nms_thresh=NMS,
        topk_candidates=0, max_detections=10_000,
    )[0]
    assert len(per_class) != len(result) or not torch.equal(per_class.scores, result.scores)  # a different rule


def test_class_agnostic_removed_candidates_point_at_their_remover():
    logits, deltas, anchor_boxes = inputs(7, anchors=120)
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    (result,), (removed,) = select_detections(
        logits, deltas, anchor_boxes, transform, SIZE, [len(anchor_boxes)], score_thresh=THRESH, nms_thresh=NMS,
        topk_candidates=0, max_detections=10_000, nms_rule="class_agnostic", return_removed=True,
    )
    assert len(removed) > 0
    remover = result[removed.kept_index]
    assert torch.equal(remover.pred_classes, removed.pred_classes)
    iou = pairwise_iou(removed.pred_boxes, Boxes(remover.pred_boxes.tensor)).diagonal()
    assert torch.all(iou > NMS)


def test_unknown_rule_is_refused_naming_the_key():
    logits, deltas, anchor_boxes = inputs(0)
    with pytest.raises(ValueError, match="MODEL.MUTUAL_GUIDE.NMS_RULE"):
        select_detections(
            logits, deltas, anchor_boxes, Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)), SIZE,
            [len(anchor_boxes)], score_thresh=THRESH, nms_thresh=NMS, topk_candidates=0, max_detections=10,
            nms_rule="agnostic",
        )
