import math

import pytest
import torch
from fvcore.nn import sigmoid_focal_loss

from detectron2.modeling.box_regression import Box2BoxTransform

from mutual_guide.modeling.assignment import AnchorLabels, build_anchor_matcher
from mutual_guide.modeling.losses import balanced_l1_loss, mutual_guide_losses, sigmoid_focal_loss_sum

B2B = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- elementwise losses, by hand
def focal(logit, label, alpha=0.25, gamma=1.0, ignore="anchor"):
    """Focal loss of one anchor with one class: label 0 positive, 1 negative, -1 ignored."""
    logits = torch.tensor([[[logit]]])
    labels, ignored_class = torch.tensor([[label]]), torch.tensor([[0]])
    return float(sigmoid_focal_loss_sum(logits, labels, ignored_class, alpha, gamma, ignore=ignore))


def test_focal_loss_values():
    # p = 0.5: positive 0.25 * 0.5 * ln 2, negative 0.75 * 0.5 * ln 2; p = 0.75 positive: 0.25 * 0.25 * ln(4/3)
    assert focal(0.0, 0) == pytest.approx(0.0866434, abs=1e-7)
    assert focal(0.0, 1) == pytest.approx(0.2599302, abs=1e-7)
    assert focal(math.log(3.0), 0) == pytest.approx(0.0179801, abs=1e-7)
    # gamma 2, p = 0.75 negative: 0.75 * 0.75 ** 2 * ln 4
    assert focal(math.log(3.0), 1, gamma=2.0) == pytest.approx(0.5848429, abs=1e-6)
    assert focal(math.log(3.0), -1) == 0.0
    assert focal(math.log(3.0), -1, ignore="class") == 0.0


def test_unknown_ignore_rule_is_refused():
    with pytest.raises(ValueError, match="'both'"):
        focal(0.0, 0, ignore="both")


@pytest.mark.parametrize("ignore", ["anchor", "class"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 1.0), (0.3, 2.0)])
def test_focal_loss_equals_fvcore_on_dense_targets(alpha, gamma, ignore):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 50, 7, generator=g) * 3).requires_grad_()
    cls_labels = torch.randint(-1, 8, (2, 50), generator=g)  # 7 = negative
    ignored_class = torch.where(cls_labels == -1, torch.randint(0, 7, (2, 50), generator=g), 7)
    targets = torch.nn.functional.one_hot(cls_labels.clamp(min=0), 8)[..., :7].float() * (cls_labels >= 0)[..., None]
    if ignore == "class":
        keep = ~torch.nn.functional.one_hot(ignored_class, 8)[..., :7].bool()
    else:
        keep = (cls_labels != -1)[..., None].expand(-1, -1, 7)
    reference = (sigmoid_focal_loss(logits, targets, alpha, gamma) * keep).sum()
    (grad_reference,) = torch.autograd.grad(reference, logits)
    ours = sigmoid_focal_loss_sum(logits, cls_labels, ignored_class, alpha, gamma, ignore=ignore)
    (grad,) = torch.autograd.grad(ours, logits)
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    assert torch.allclose(grad, grad_reference, atol=1e-6)
    assert (grad[keep.logical_not()] == 0).all()


@pytest.mark.parametrize("ignore", ["anchor", "class"])
@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.5])
def test_focal_loss_closed_form_gradient_equals_finite_differences(gamma, ignore):
    """The hand-written backward against torch.autograd.gradcheck's finite differences, in float64."""
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 6, 4, generator=g, dtype=torch.float64) * 3).requires_grad_()
    cls_labels = torch.tensor([[0, 4, -1, 3, 4, -1], [2, -1, 4, 4, 1, 0]])  # 4 = negative
    ignored_class = torch.where(cls_labels == -1, torch.tensor([[0, 0, 2, 0, 0, 3], [0, 1, 0, 0, 0, 0]]), 4)
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_loss_sum(x, cls_labels, ignored_class, 0.3, gamma, ignore=ignore), (logits,)
    )


def test_focal_loss_keeps_the_logits_dtype_for_their_gradient():
    logits = torch.randn(1, 5, 3).to(torch.bfloat16).requires_grad_()
    loss = sigmoid_focal_loss_sum(logits, torch.tensor([[0, 3, -1, 2, 3]]), torch.full((1, 5), 3))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_balanced_l1_values():
    # b = e^3 - 1 = 19.0855; x >= beta: 1.5 x + 1.5 / b - 0.055; x < beta: 0.5 / b (b x + 1) ln(b x / 0.11 + 1) - 0.5 x
    x = torch.tensor([0.0, 0.05, 0.2, 1.0])
    loss = balanced_l1_loss(x, torch.zeros(4), alpha=0.5, gamma=1.5, beta=0.11)
    assert loss.tolist() == pytest.approx([0.0, 0.0911971, 0.3235935, 1.5235935], abs=1e-6)
    assert balanced_l1_loss(-x, torch.zeros(4)).tolist() == loss.tolist()  # symmetric


def test_balanced_l1_continuous_at_beta_with_gradients():
    beta, b = 0.11, math.exp(3.0) - 1
    x = torch.tensor([beta - 1e-6, beta + 1e-6, 0.05], dtype=torch.float64, requires_grad=True)
    loss = balanced_l1_loss(x, torch.zeros(3, dtype=torch.float64), beta=beta)
    assert float(loss[0]) == pytest.approx(float(loss[1]), abs=1e-5)
    loss.sum().backward()
    # above beta the slope is gamma; below it alpha ln(b x / beta + 1) + alpha (b x + 1) / (b x + beta) - alpha
    below = 0.5 * math.log(b * 0.05 / beta + 1) + 0.5 * (b * 0.05 + 1) / (b * 0.05 + beta) - 0.5
    assert x.grad.tolist()[1:] == pytest.approx([1.5, below], rel=1e-6)


def test_the_configured_box_encoding_is_ssds(oracle, make_cfg):
    # the detector's Box2BoxTransform takes MODEL.MUTUAL_GUIDE.BBOX_REG_WEIGHTS: the default must be SSD's variances
    box2box = Box2BoxTransform(weights=make_cfg().MODEL.MUTUAL_GUIDE.BBOX_REG_WEIGHTS)
    anchors = torch.tensor([[10.0, 20.0, 40.0, 35.0], [0.0, 0.0, 8.0, 8.0]])
    boxes = torch.tensor([[12.0, 18.0, 50.0, 30.0], [1.0, 2.0, 5.0, 9.0]])
    deltas = box2box.get_deltas(anchors, boxes)
    for d, b, a in zip(deltas, boxes, anchors):
        assert d.tolist() == pytest.approx(oracle.ssd_encode(b.tolist(), a.tolist()), rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- mutual_guide_losses, by hand
def hand_case():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]])
    gt_boxes = torch.tensor([[[1.0, 0.0, 11.0, 10.0]]])  # deltas against anchor 0: (1, 0, 0, 0)
    labels = AnchorLabels(
        cls_labels=torch.tensor([[1, -1, 2]]),  # positive class 1, ignored, negative (C = 2)
        reg_mask=torch.tensor([[True, False, False]]),
        reg_idx=torch.tensor([[0, 0, 0]]),
        cls_idx=torch.tensor([[0, 0, 0]]),
        ignored_class=torch.tensor([[2, 0, 2]]),  # anchor 1 is ignored for class 0 only
    )
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    deltas = torch.zeros(1, 3, 4, requires_grad=True)
    return logits, deltas, anchors, gt_boxes, labels


@pytest.mark.parametrize("ignore,negatives", [("anchor", 3), ("class", 4)])
def test_losses_hand_values(ignore, negatives):
    logits, deltas, anchors, gt_boxes, labels = hand_case()
    out = mutual_guide_losses(
        logits, deltas, anchors, gt_boxes, labels, B2B, focal_alpha=0.25, focal_gamma=1.0, ignore=ignore
    )
    # p = 0.5 everywhere: 1 positive score (0.25 * 0.5 ln 2) + negative scores (0.75 * 0.5 ln 2 each): anchor 0's
    # class 0, anchor 2's two, and under "class" the ignored anchor's class-1 score; one positive anchor
    assert float(out["loss_cls"]) == pytest.approx(0.125 * LN2 + negatives * 0.375 * LN2, rel=1e-6)
    # |diff| = (1, 0, 0, 0): (1.5 + 1.5 / b - 0.055 + 0) / 4
    assert float(out["loss_box_reg"]) == pytest.approx(1.5235935 / 4, rel=1e-6)


def test_loss_weights_scale_each_loss():
    logits, deltas, anchors, gt_boxes, labels = hand_case()
    base = mutual_guide_losses(logits, deltas, anchors, gt_boxes, labels, B2B)
    weighted = mutual_guide_losses(logits, deltas, anchors, gt_boxes, labels, B2B, cls_weight=2.0, box_weight=3.0)
    assert float(weighted["loss_cls"]) == pytest.approx(2 * float(base["loss_cls"]))
    assert float(weighted["loss_box_reg"]) == pytest.approx(3 * float(base["loss_box_reg"]))


@pytest.mark.parametrize("ignore", ["anchor", "class"])
def test_gradients_reach_trained_scores_only(ignore):
    logits, deltas, anchors, gt_boxes, labels = hand_case()
    out = mutual_guide_losses(logits, deltas, anchors, gt_boxes, labels, B2B, ignore=ignore)
    (out["loss_cls"] + out["loss_box_reg"]).backward()
    assert logits.grad[0, 1, 0] == 0  # the score of the class anchor 1 is ignored for
    assert (logits.grad[0, 1, 1] != 0) == (ignore == "class")  # its other score: trained only under "class"
    assert (logits.grad[0, 0] != 0).all() and (logits.grad[0, 2] != 0).all()
    assert deltas.grad[0, 0, 0] != 0 and (deltas.grad[0, 1:] == 0).all()


# ----------------------------------------------------------------------------- against the oracle
@pytest.mark.parametrize("ignore", ["anchor", "class"])
@pytest.mark.parametrize("mutual", [True, False])
def test_losses_equal_oracle(mutual, ignore, labelled_batch, oracle):
    for seed, max_boxes in [(10, 0), (11, 1), (12, 5), (13, 9)]:  # no box, one, several, many
        (anchors, boxes, _, _, logits), gt_boxes, labels, expected_labels = labelled_batch(seed, max_boxes, mutual)
        deltas = torch.randn(logits.shape[0], len(anchors), 4, generator=torch.Generator().manual_seed(seed))
        kwargs = dict(focal_alpha=0.3, focal_gamma=1.5, bl1_alpha=0.5, bl1_gamma=1.5, bl1_beta=0.11, ignore=ignore)
        out = mutual_guide_losses(logits, deltas, anchors, gt_boxes, labels, B2B, **kwargs)
        expected = oracle.oracle_losses(logits, deltas, anchors, boxes, expected_labels, **kwargs)
        case = f"seed {seed}, {max_boxes} boxes at most"
        assert float(out["loss_cls"]) == pytest.approx(float(expected["loss_cls"]), rel=1e-5), case
        assert float(out["loss_box_reg"]) == pytest.approx(float(expected["loss_box_reg"]), rel=1e-5, abs=1e-7), case
        if max_boxes:
            assert float(out["loss_box_reg"]) > 0, case
        if ignore == "class" and (labels.cls_labels == -1).any():
            # the rules differ exactly when an anchor is ignored: "class" keeps its other C - 1 scores
            kwargs["ignore"] = "anchor"
            anchor_rule = mutual_guide_losses(logits, deltas, anchors, gt_boxes, labels, B2B, **kwargs)
            assert float(out["loss_cls"]) > float(anchor_rule["loss_cls"]), case


@pytest.mark.parametrize("mutual", [True, False])
def test_image_without_boxes_trains(mutual, random_batch):
    anchors, boxes, classes, pred, logits = random_batch(20, 0)
    gt_boxes, gt_classes, valid = torch.zeros(4, 0, 4), torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, 0).bool()
    matcher = build_anchor_matcher(mutual, (0.4, 0.5), logits.shape[-1])
    labels = matcher(anchors, gt_boxes, gt_classes, valid, pred, logits)
    logits = logits.clone().requires_grad_()
    deltas = torch.randn(4, len(anchors), 4, requires_grad=True)
    out = mutual_guide_losses(logits, deltas, anchors, gt_boxes, labels, B2B)
    assert torch.isfinite(out["loss_cls"]) and float(out["loss_cls"]) > 0
    assert float(out["loss_box_reg"]) == 0.0 and out["loss_box_reg"].requires_grad
    (out["loss_cls"] + out["loss_box_reg"]).backward()
    assert deltas.grad is not None and (deltas.grad == 0).all()
    # all negatives, normaliser 1: the plain sum of negative focal losses
    assert float(out["loss_cls"]) == pytest.approx(
        float(sigmoid_focal_loss(logits.detach(), torch.zeros_like(logits), 0.25, 1.0).sum()), rel=1e-5
    )
