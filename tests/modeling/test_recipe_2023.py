"""The authors' 2023 losses (RECIPE authors_2023): values by hand, the oracle, their bugs and fixes, the detector."""
import math

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mutual_guide.modeling.assignment import AnchorLabels, build_anchor_matcher, pad_ground_truth
from mutual_guide.modeling.dynamic_assignment import DynamicMutualGuidanceMatcher
from mutual_guide.modeling.recipe_2023 import Authors2023Losses, shift_labels_as_authors
from mutual_guide.modeling.soft_losses import siou_loss, varifocal_poly_loss_sum

B2B = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- elementwise losses, by hand
def vfl(logit, target, cls=0):
    logits = torch.full((1, 1, 2), -1e4)  # the other class: p = 0, contributes exactly 0
    logits[0, 0, cls] = logit
    return float(varifocal_poly_loss_sum(logits, torch.tensor([[cls]]), torch.tensor([[target]])))


def test_varifocal_poly_values():
    # p = 0.5. Negative: 0.75 * 0.5^2 * ln 2 + 0.5^3; positive t = 1: ln 2 + 0.5^3; soft t = 0.5: BCE(0.5, 0.5) is
    # ln 2, weighted by t, plus the Poly-1 term towards 1
    assert vfl(0.0, 0.0) == pytest.approx(0.75 * 0.25 * LN2 + 0.125, abs=1e-7)
    assert vfl(0.0, 1.0) == pytest.approx(LN2 + 0.125, abs=1e-7)
    assert vfl(0.0, 0.5) == pytest.approx(0.5 * LN2 + 0.125, abs=1e-7)
    # p = 0.75, t = 0.75: 0.75 * BCE + 0.25^3, BCE = -(0.75 ln 0.75 + 0.25 ln 0.25)
    bce = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert vfl(math.log(3.0), 0.75) == pytest.approx(0.75 * bce + 0.25**3, abs=1e-6)


def test_varifocal_poly_equals_the_oracle_with_its_gradient(oracle):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 30, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.randint(0, 5, (2, 30), generator=g)
    targets = torch.rand(2, 30, generator=g, dtype=torch.float64) * (torch.rand(2, 30, generator=g) < 0.3)
    dense = torch.zeros_like(logits).scatter(-1, labels.unsqueeze(-1), targets.unsqueeze(-1))
    for alpha, gamma, eps in ((0.75, 2.0, 1.0), (0.25, 1.5, 0.0)):
        reference = oracle.varifocal_poly(logits, dense, alpha, gamma, eps).sum()
        (grad_reference,) = torch.autograd.grad(reference, logits)
        ours = varifocal_poly_loss_sum(logits, labels, targets, alpha, gamma, eps)
        (grad,) = torch.autograd.grad(ours, logits)
        assert float(ours) == pytest.approx(float(reference), rel=1e-12)
        assert torch.allclose(grad, grad_reference, atol=1e-12)


def test_siou_by_hand(oracle):
    # pred [0, 0, 2, 2], object [1, 0, 3, 2]: IoU 2 / 6, offset along x only (angle cost 0, gamma -2), enclosing
    # width 3: distance cost 1 - exp(-2 / 9), same shape
    expected = 1 - (2 / (6 + 1e-7) - 0.5 * (1 - math.exp(-2 / 9)))
    got = float(siou_loss(torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 0, 3, 2])))
    assert got == pytest.approx(expected, abs=1e-6)
    assert 1 - oracle.siou([0.0, 0, 2, 2], [1.0, 0, 3, 2]) == pytest.approx(expected, abs=1e-9)
    # a diagonal offset and different shapes, against the oracle's trigonometry
    pred, target = [0.1, 0.2, 0.5, 0.45], [0.15, 0.3, 0.6, 0.7]
    got = float(siou_loss(torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)))
    assert got == pytest.approx(1 - oracle.siou(pred, target), abs=1e-12)


def test_siou_at_coinciding_centres_is_nan_unless_fixed():
    # NaN needs offsets that cancel exactly in float: dyadic coordinates do (0.2 and 0.4 would leave ~1e-8)
    box = torch.tensor([0.25, 0.25, 0.5, 0.75])
    assert math.isnan(float(siou_loss(box, box)))  # the authors' code: 0 / 0
    assert float(siou_loss(box, box, centre_eps=1e-7)) == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------------- the losses against the oracle
def labelled(random_batch, seed=0, max_boxes=6):
    anchors, boxes, classes, pred, logits = random_batch(seed, max_boxes)
    instances = [Instances((64, 64), gt_boxes=Boxes(b), gt_classes=c) for b, c in zip(boxes, classes)]
    gt_boxes, gt_classes, valid = pad_ground_truth(instances)
    labels = DynamicMutualGuidanceMatcher(logits.shape[-1])(anchors, gt_boxes, gt_classes, valid, pred, logits)
    return anchors, boxes, gt_boxes, labels, logits


def test_mutual_guidance_losses_equal_the_oracle(random_batch, oracle):
    anchors, boxes, gt_boxes, labels, logits = labelled(random_batch)
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(*labels.reg_mask.shape, 4, generator=g) * 0.5
    losses = Authors2023Losses(num_classes=logits.shape[-1], mutual_guidance=True)(
        logits, deltas, anchors, gt_boxes, labels, B2B, 64
    )
    expected = oracle.oracle_authors_2023_losses(
        logits, deltas, anchors, boxes, {k: getattr(labels, k) for k in labels._fields}, 64
    )
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_box_iou"}
    for key in losses:
        assert float(losses[key]) == pytest.approx(float(expected[key]), rel=1e-5), key


def test_box_losses_are_means_weighted_by_the_regression_quality(random_batch):
    """weights / weights.sum(): scaling every weight leaves the box losses unchanged; the weights matter."""
    anchors, boxes, gt_boxes, labels, logits = labelled(random_batch, seed=2)
    deltas = torch.randn(*labels.reg_mask.shape, 4, generator=torch.Generator().manual_seed(3)) * 0.5
    criterion = Authors2023Losses(num_classes=logits.shape[-1], mutual_guidance=True)
    base = criterion(logits, deltas, anchors, gt_boxes, labels, B2B, 64)
    scaled = criterion(logits, deltas, anchors, gt_boxes, labels._replace(reg_weight=labels.reg_weight * 0.5), B2B, 64)
    uniform = criterion(logits, deltas, anchors, gt_boxes,
                        labels._replace(reg_weight=labels.reg_mask.float()), B2B, 64)
    for key in ("loss_box_reg", "loss_box_iou"):
        assert float(scaled[key]) == pytest.approx(float(base[key]), rel=1e-6)
        assert float(uniform[key]) != pytest.approx(float(base[key]), rel=1e-3)


def test_empty_batch_divides_by_zero_unless_fixed():
    anchors = torch.tensor([[0.0, 0, 8, 8], [8.0, 8, 16, 16]])
    empty = (torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    logits, deltas = torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)
    for mutual in (True, False):
        matcher = DynamicMutualGuidanceMatcher(3) if mutual else build_anchor_matcher(False, (0.4, 0.5), 3)
        labels = matcher(anchors, *empty, pred_boxes=anchors[None], pred_logits=logits)
        followed = Authors2023Losses(num_classes=3, mutual_guidance=mutual)(logits, deltas, anchors, empty[0],
                                                                             labels, B2B, 16)
        fixed = Authors2023Losses(num_classes=3, mutual_guidance=mutual, fix_empty_batch=True)(
            logits, deltas, anchors, empty[0], labels, B2B, 16)
        assert not torch.isfinite(followed["loss_cls"])
        assert all(torch.isfinite(v) for v in fixed.values()) and float(fixed["loss_cls"]) > 0
        if mutual:  # weighted means over no positive: 0, as their sums over empty tensors
            assert float(followed["loss_box_reg"]) == float(followed["loss_box_iou"]) == 0.0
        else:  # their mean over no positive
            assert math.isnan(float(followed["loss_box_reg"])) and float(fixed["loss_box_reg"]) == 0.0


def test_siou_nan_at_coinciding_centres_unless_fixed():
    # zero deltas predict the anchor itself; the object is centred on it
    anchors = torch.tensor([[4.0, 4, 12, 12], [20.0, 20, 28, 28]])
    gt = torch.tensor([[[2.0, 3, 14, 13]]])
    labels = DynamicMutualGuidanceMatcher(2)(anchors, gt, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool),
                                             pred_boxes=anchors[None], pred_logits=torch.zeros(1, 2, 2))
    assert labels.reg_mask.tolist() == [[True, False]]
    args = (torch.zeros(1, 2, 2), torch.zeros(1, 2, 4), anchors, gt, labels, B2B, 32)
    assert math.isnan(float(Authors2023Losses(num_classes=2, mutual_guidance=True)(*args)["loss_box_iou"]))
    fixed = Authors2023Losses(num_classes=2, mutual_guidance=True, fix_siou_centres=True)(*args)
    assert all(torch.isfinite(v) for v in fixed.values())


def test_baseline_trains_class_c_as_c_minus_1_unless_fixed(oracle):
    # anchor 0 positive for a class-0 box, anchor 1 for a class-2 box, anchor 2 ignored for the class-2 box,
    # anchor 3 ignored for the class-0 box, anchor 4 negative
    c = 3
    cls_labels = torch.tensor([[0, 2, -1, -1, c]])
    ignored_class = torch.tensor([[c, c, 2, 0, c]])
    labels = AnchorLabels(cls_labels, cls_labels >= 0, torch.tensor([[0, 1, 1, 0, 0]]), torch.tensor([[0, 1, 1, 0, 0]]),
                          ignored_class)
    shifted = shift_labels_as_authors(labels, c)
    assert shifted.cls_labels.tolist() == [[c, 1, -1, -1, c]]
    assert shifted.ignored_class.tolist() == [[c, c, 1, c, c]]  # the class-0 box's ignored anchor leaves out nothing

    anchors = torch.tensor([[0.0, 0, 8, 8], [8.0, 0, 16, 8], [0.0, 8, 8, 16], [8.0, 8, 16, 16], [0.0, 0, 16, 16]])
    boxes = [torch.tensor([[0.0, 0, 9, 9], [8.0, 0, 16, 9]])]
    g = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(1, 5, c, generator=g), torch.randn(1, 5, 4, generator=g) * 0.3
    for fix, used in ((False, shifted), (True, labels)):
        losses = Authors2023Losses(num_classes=c, mutual_guidance=False, fix_baseline_labels=fix)(
            logits, deltas, anchors, boxes[0][None], labels, B2B, 16)
        as_dict = {"cls_labels": used.cls_labels, "ignored_class": used.ignored_class, "reg_mask": labels.reg_mask,
                   "reg_idx": labels.reg_idx}
        expected = oracle.oracle_losses(logits, deltas, anchors, boxes, as_dict, focal_gamma=2.0, ignore="class")
        assert float(losses["loss_cls"]) == pytest.approx(2.0 * float(expected["loss_cls"]), rel=1e-5)
        assert float(losses["loss_box_reg"]) == pytest.approx(float(expected["loss_box_reg"]), rel=1e-5)


# ----------------------------------------------------------------------------- in the detector
@pytest.mark.parametrize("mutual", [True, False])
def test_detector_trains_with_the_2023_recipe_and_logs_its_assignment(make_cfg, mutual):
    cfg = make_cfg("ShuffleNetV2", "SSD", 128, 3, opts=[
        "MODEL.MUTUAL_GUIDE.RECIPE", "authors_2023", "MODEL.MUTUAL_GUIDE.ENABLED", mutual,
        "MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD", 1, "VIS_PERIOD", 1])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert isinstance(model.anchor_matcher, DynamicMutualGuidanceMatcher) == mutual
    g = torch.Generator().manual_seed(0)
    instances = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[10.0, 20, 70, 90], [60, 60, 120, 110]])),
                          gt_classes=torch.tensor([1, 2]))
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g)
    with EventStorage() as storage:
        drawn = []
        storage.put_image = lambda name, image: drawn.append(name)
        losses = model([{"image": image, "instances": instances}])
        storage.step()
    expected = {"loss_cls", "loss_box_reg"} | ({"loss_box_iou"} if mutual else set())
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    scalars = storage.latest()
    assert scalars["assignment/all/objects"][0] == 2
    assert scalars["num_reg_positives"][0] >= 2  # per image, at least one per object
    assert drawn == ["training_samples/0"]


def test_unknown_recipe_is_refused(make_cfg):
    cfg = make_cfg("ShuffleNetV2", "SSD", 128, 3, opts=["MODEL.MUTUAL_GUIDE.RECIPE", "authors_2024"])
    with pytest.raises(ValueError, match="MODEL.MUTUAL_GUIDE.RECIPE must be one of .*'authors_2024'"):
        build_model(cfg)


def test_config_keys_reach_the_matcher_and_the_losses(make_cfg):
    from mutual_guide.modeling.meta_arch.detector import build_recipe

    r = "MODEL.MUTUAL_GUIDE.RECIPE_2023."
    cfg = make_cfg("ShuffleNetV2", "SSD", 128, 3, opts=[
        "MODEL.MUTUAL_GUIDE.RECIPE", "authors_2023", r + "TOPK", 7, r + "SIGMA", 3.0, r + "FIX_EMPTY_BATCH", True,
        r + "FIX_SIOU_CENTRES", True, r + "POLY_EPSILON", 0.5])
    matcher, losses = build_recipe(cfg)
    assert (matcher.topk, matcher.sigma) == (7, 3.0)
    assert repr(losses) == "Authors2023Losses(mutual guidance, fixes=['empty_batch', 'siou_centres'])"
    assert losses.vfl == (0.75, 2.0, 0.5)
    cfg.merge_from_list(["MODEL.MUTUAL_GUIDE.ENABLED", False, r + "FIX_BASELINE_LABELS", True])
    matcher, losses = build_recipe(cfg)
    assert type(matcher).__name__ == "BestAnchorIoUMatcher" and losses.fix_baseline_labels
    assert build_recipe(make_cfg("ShuffleNetV2", "SSD", 128, 3))[1] is None  # the paper's recipe by default
