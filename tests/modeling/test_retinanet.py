"""MutualGuideRetinaNet: detectron2's RetinaNet without mutual guidance, the paper's assignment with it."""
import os

import numpy as np
import pytest
import torch
from conftest import ROOT

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.modeling.assignment import MutualGuidanceMatcher
from mutual_guide.modeling.postprocessing import REMOVED_CANDIDATES, removed_candidates_recorded

C = 3


@pytest.fixture(scope="module")
def tiny_cfg(make_cfg):
    """
    tiny_cfg(meta_architecture="MutualGuideRetinaNet", enabled=False): detectron2's RetinaNet on a ResNet-18-FPN of
    32 channels, one conv per head branch, anchors 8-161 px.
    """

    def build(meta_architecture="MutualGuideRetinaNet", enabled=False):
        cfg = make_cfg()
        cfg.MODEL.META_ARCHITECTURE = meta_architecture
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.RESNETS.NORM = 18, 64, "GN"
        cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.RETINANET.NUM_CONVS = 32, 1
        cfg.MODEL.RETINANET.NUM_CLASSES = cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = C
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in (8, 16, 32, 64, 128)]
        cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0  # an untrained network scores about its prior, 0.01
        cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.0  # Base-RetinaNet.yaml's
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (96, 112, 128), 128
        cfg.MODEL.MUTUAL_GUIDE.ENABLED = enabled
        return cfg

    return build


def two_sizes_batch():
    """Two images of different sizes (padded into one batch), 2 and 1 objects; image 1's box touches its edge."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for (h, w), boxes, classes in (
        ((96, 128), [[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]], [0, 2]),
        ((128, 80), [[5.0, 5.0, 40.0, 128.0]], [1]),
    ):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        instances = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(classes))
        batch.append({"image": image, "instances": instances})
    return batch


def head_outputs(model, batch, spread=None):
    """
    What forward_training receives: anchors (per level) and the transposed per-level predictions. With `spread`
    (a seed) the predictions get noise, so that they differ between anchors as a trained network's do (an
    untrained head predicts the anchors themselves and the prior score everywhere).
    """
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(model.head(features), [model.num_classes, 4])
    if spread is not None:
        g = torch.Generator().manual_seed(spread)
        logits = [x.detach() + torch.randn(x.shape, generator=g) * 3 for x in logits]
        deltas = [x.detach() + torch.randn(x.shape, generator=g) * 0.3 for x in deltas]
    return model.anchor_generator(features), logits, deltas


@pytest.fixture(scope="module")
def retinanets(tiny_cfg):
    """detectron2's RetinaNet and ours without and with mutual guidance, all on the same weights."""
    torch.manual_seed(0)
    reference = build_model(tiny_cfg("RetinaNet"))
    ours = build_model(tiny_cfg(enabled=False))
    mutual = build_model(tiny_cfg(enabled=True))
    ours.load_state_dict(reference.state_dict())
    mutual.load_state_dict(reference.state_dict())
    return reference, ours, mutual


def test_without_mutual_guidance_it_is_detectron2s_retinanet(retinanets):
    reference, ours, _ = retinanets
    batch = two_sizes_batch()
    gt = [x["instances"] for x in batch]
    anchors, _, _ = head_outputs(reference, batch)
    expected_labels, expected_boxes = reference.label_anchors(anchors, gt)
    labels, boxes = ours.label_anchors(anchors, gt)
    assert all(torch.equal(a, b) for a, b in zip(labels, expected_labels))
    assert all(torch.equal(a, b) for a, b in zip(boxes, expected_boxes))
    assert all(((x >= 0) & (x < C)).any() for x in labels)  # both images have positives: not vacuous

    reference.train(), ours.train()
    with EventStorage():
        expected = reference(batch)
        losses = ours(batch)
    assert expected.keys() == losses.keys() == {"loss_cls", "loss_box_reg"}
    assert all(torch.equal(losses[k], expected[k]) for k in expected)
    assert float(expected["loss_box_reg"]) > 0

    reference.eval(), ours.eval()
    with torch.no_grad():
        expected, outputs = reference(batch), ours(batch)
    for e, o in zip(expected, outputs):
        e, o = e["instances"], o["instances"]
        assert len(e) > 0 and e.image_size == o.image_size
        assert torch.equal(e.pred_boxes.tensor, o.pred_boxes.tensor)
        assert torch.equal(e.scores, o.scores) and torch.equal(e.pred_classes, o.pred_classes)


def test_removed_candidates_only_when_asked_detections_unchanged(retinanets):
    # RetinaNet's inference with its removed candidates: the same detections, and each removed candidate owned by
    # a detection of its class, scoring at least as much, overlapping it above the NMS IoU (before the clip of
    # detector_postprocess, so checked on candidates inside the image only)
    _, ours, _ = retinanets
    batch = [{"image": x["image"], "height": 2 * x["image"].shape[1], "width": x["image"].shape[2]}
             for x in two_sizes_batch()]
    ours.eval()
    with torch.no_grad():
        plain = ours(batch)
        with removed_candidates_recorded(ours):
            recorded = ours(batch)
    assert not ours.record_removed_candidates and all(REMOVED_CANDIDATES not in o for o in plain)
    for p, r, x in zip(plain, recorded, batch):
        assert not r["instances"].has("nms_position")
        assert torch.equal(p["instances"].pred_boxes.tensor, r["instances"].pred_boxes.tensor)
        assert torch.equal(p["instances"].scores, r["instances"].scores)
        detections, removed = r["instances"], r[REMOVED_CANDIDATES]
        assert removed.image_size == (x["height"], x["width"]) and len(removed) > 20
        owner = removed.kept_index
        assert owner.min() >= 0 and owner.max() < len(detections)
        assert torch.equal(removed.pred_classes, detections.pred_classes[owner])
        assert (removed.scores <= detections.scores[owner]).all()
        h, w = x["height"], x["width"]
        inside = lambda b: (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < w) & (b[:, 3] < h)  # noqa: E731
        both = inside(removed.pred_boxes.tensor) & inside(detections.pred_boxes.tensor[owner])
        ious = pairwise_iou(removed.pred_boxes[both], detections.pred_boxes[owner[both]]).diagonal()
        assert both.sum() > 10 and (ious > ours.test_nms_thresh - 1e-4).all()


def test_with_mutual_guidance_labels_are_the_oracles(retinanets, oracle):
    """Per image, on RetinaNet's anchors and decoded predictions in pixels: the plain per-object assignment."""
    _, _, mutual = retinanets
    assert isinstance(mutual.anchor_matcher, MutualGuidanceMatcher)
    batch = two_sizes_batch()
    gt = [x["instances"] for x in batch]
    anchors, logits, deltas = head_outputs(mutual, batch, spread=1)
    labels, matched_boxes = mutual.label_anchors(anchors, gt, logits, deltas)

    all_anchors = Boxes.cat(anchors).tensor
    deltas = torch.cat(deltas, dim=1).detach()
    pred_boxes = torch.stack([mutual.box2box_transform.apply_deltas(d, all_anchors) for d in deltas])
    expected = oracle.oracle_label_anchors(
        all_anchors, [x.gt_boxes.tensor for x in gt], [x.gt_classes for x in gt], C, pred_boxes,
        torch.cat(logits, dim=1),
    )
    assert torch.equal(labels.cls_labels, expected["cls_labels"])
    assert torch.equal(labels.reg_mask, expected["reg_mask"])
    for i, x in enumerate(gt):
        reg = labels.reg_mask[i]
        assert torch.equal(matched_boxes[i][reg], x.gt_boxes.tensor[expected["reg_idx"][i][reg]])
    # not RetinaNet's labels: the two tasks' positives differ from each other and from the IoU rule's
    iou_labels, _ = retinanets[0].label_anchors(anchors, gt)
    cls_positive = (labels.cls_labels >= 0) & (labels.cls_labels < C)
    assert not torch.equal(cls_positive, labels.reg_mask)
    assert not torch.equal(labels.cls_labels, torch.stack(iou_labels))


def test_with_mutual_guidance_each_loss_runs_over_its_tasks_anchors(retinanets, oracle):
    _, _, mutual = retinanets
    batch = two_sizes_batch()
    gt = [x["instances"] for x in batch]
    anchors, logits, deltas = head_outputs(mutual, batch, spread=2)
    labels, matched_boxes = mutual.label_anchors(anchors, gt, logits, deltas)
    mutual.__dict__.pop("loss_normalizer", None), mutual.__dict__.pop("loss_box_normalizer", None)
    with EventStorage():
        losses = mutual.losses(anchors, logits, labels, deltas, matched_boxes)

    # plain, anchor by anchor: focal loss (alpha 0.25, gamma 2) over positives and negatives, L1 of the deltas
    # (SMOOTH_L1_LOSS_BETA 0) over the regression positives, each over RetinaNet's moving average from 100
    all_anchors, logits, deltas = Boxes.cat(anchors).tensor, torch.cat(logits, 1), torch.cat(deltas, 1)
    loss_cls, loss_box = 0.0, 0.0
    for i in range(len(gt)):
        for a in range(len(all_anchors)):
            label = int(labels.cls_labels[i, a])
            if label >= 0:
                target = torch.zeros(C)
                if label < C:
                    target[label] = 1.0
                loss_cls += float(oracle.focal(logits[i, a].detach(), target, alpha=0.25, gamma=2.0).sum())
            if labels.reg_mask[i, a]:
                box = gt[i].gt_boxes.tensor[labels.reg_idx[i, a]]
                target = mutual.box2box_transform.get_deltas(all_anchors[a : a + 1], box[None])[0]
                loss_box += float((deltas[i, a].detach() - target).abs().sum())
    num_cls = int(((labels.cls_labels >= 0) & (labels.cls_labels < C)).sum())
    num_reg = int(labels.reg_mask.sum())
    # the box loss over the classification positives would differ: the two sets differ here
    assert not torch.equal(labels.reg_mask, (labels.cls_labels >= 0) & (labels.cls_labels < C))
    assert float(losses["loss_cls"]) == pytest.approx(loss_cls / (0.9 * 100 + 0.1 * num_cls), rel=1e-5)
    assert float(losses["loss_box_reg"]) == pytest.approx(loss_box / (0.9 * 100 + 0.1 * num_reg), rel=1e-5)


@pytest.mark.slow
def test_trains_with_mutual_guidance_on_the_demo_shapes(tmp_path, tiny_cfg):
    """A few SGD steps on four of the demo's images, multi-size through detectron2's DatasetMapper: both losses
    fall (measured on the same inputs before and after, the normalisers restarted)."""
    info = make_synthetic_dataset(str(tmp_path), fmt="coco", num_train=4, num_test=0, image_size=128, seed=0)
    dicts = load_coco_json(os.path.join(info["root"], "annotations", "train.json"),
                           os.path.join(info["root"], "images"), "retina_shapes_train")
    cfg = tiny_cfg(enabled=True)
    torch.manual_seed(0)
    np.random.seed(0)  # detectron2's augmentations draw from numpy's global generator
    model = build_model(cfg).train()
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in dicts]
    assert len({tuple(x["image"].shape) for x in batch}) > 1  # several input sizes, padded into one batch

    def measure():
        model.__dict__.pop("loss_normalizer", None), model.__dict__.pop("loss_box_normalizer", None)
        with torch.no_grad():
            return {k: float(v) for k, v in model(batch).items()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with EventStorage() as storage:
        before = measure()
        for _ in range(8):
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            storage.step()
        after = measure()
        assert storage.history("num_reg_positives").latest() > 0
    assert after["loss_cls"] < 0.95 * before["loss_cls"], (before, after)
    assert after["loss_box_reg"] < 0.7 * before["loss_box_reg"], (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("name,classes,dataset", [("coco", 80, "mg_coco_2017_train"), ("voc", 20, "mg_voc_2007_test")])
def test_configs_load_through_setup_and_build(name, classes, dataset, tmp_path, monkeypatch):
    import train_net

    checked = []
    # the datasets are not on this machine: record the names setup would look for
    monkeypatch.setattr("mutual_guide.engine.defaults.check_dataset_paths", checked.extend)
    config = os.path.join(ROOT, "configs", f"retinanet_R50_FPN_mg_{name}.yaml")
    for enabled in (True, False):
        args = train_net.argument_parser().parse_args(
            ["--config-file", config, "OUTPUT_DIR", str(tmp_path / str(enabled)), "MODEL.DEVICE", "cpu",
             "MODEL.MUTUAL_GUIDE.ENABLED", str(enabled)]
        )
        cfg = train_net.setup(args)
        model = train_net.Trainer.build_model(cfg)
        assert type(model).__name__ == "MutualGuideRetinaNet"
        assert isinstance(model.anchor_matcher, MutualGuidanceMatcher if enabled else Matcher)
        assert model.num_classes == classes == len(MetadataCatalog.get(dataset).thing_classes)
        assert model.anchor_generator.num_anchors == [9] * 5
    assert dataset in checked


def test_detectron2s_values_in_the_coco_config(make_cfg):
    """Every key of detectron2's own RetinaNet R50-FPN 1x config has its value in ours, but for the datasets
    (this project's registered names), the meta-architecture, the output folder and the evaluation period."""
    from detectron2 import model_zoo

    try:
        reference_file = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    except RuntimeError:
        pytest.skip("detectron2's model-zoo configs are not installed")
    reference = get_cfg()
    reference.merge_from_file(reference_file)
    ours = make_cfg(config_file="retinanet_R50_FPN_mg_coco.yaml")

    def flat(node, prefix=""):
        out = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    expected, got = flat(reference), flat(ours)
    differ = sorted(k for k in expected if str(expected[k]) != str(got[k]))
    # and evaluation during training (every config evaluates a few times per schedule)
    assert differ == ["DATASETS.TEST", "DATASETS.TRAIN", "MODEL.DEVICE", "MODEL.META_ARCHITECTURE", "OUTPUT_DIR",
                      "TEST.EVAL_PERIOD"]


def test_bad_settings_are_refused_with_their_key(tiny_cfg):
    cfg = tiny_cfg(enabled=True)
    cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = 5
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.NUM_CLASSES \(3\) and MODEL.MUTUAL_GUIDE.NUM_CLASSES \(5\)"):
        build_model(cfg)
    cfg = tiny_cfg(enabled=True)
    cfg.MODEL.MUTUAL_GUIDE.IGNORE = "class"
    with pytest.raises(ValueError, match="MODEL.MUTUAL_GUIDE.IGNORE 'class' is not available"):
        build_model(cfg)
    cfg.MODEL.MUTUAL_GUIDE.ENABLED = False  # RetinaNet's own assignment reads neither key
    assert isinstance(build_model(cfg).anchor_matcher, Matcher)


@pytest.mark.slow
def test_train_net_trains_and_evaluates_it_as_detectron2_would(tmp_path, monkeypatch, tiny_cfg):
    """train_net.py on the RetinaNet config (shrunk to a tiny ResNet at 96-128 px): detectron2's DatasetMapper
    (multi-size inputs, not the paper's S x S), a training run, then --eval-only from its checkpoint through
    detectron2's partial-fit loading, with the COCO metrics of the generated test set."""
    import json

    import train_net

    from detectron2.data import DatasetCatalog

    info = make_synthetic_dataset(str(tmp_path / "shapes"), fmt="coco", num_train=8, num_test=4, image_size=128,
                                  seed=1, name="rn_shapes")
    tiny = tiny_cfg(enabled=True)
    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATASETS.CUSTOM", json.dumps(info["custom_specs"]),
        "DATASETS.TRAIN", "('rn_shapes_train',)", "DATASETS.TEST", "('rn_shapes_test',)",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.NORM", "GN",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1",
        "MODEL.RETINANET.NUM_CLASSES", str(C), "MODEL.MUTUAL_GUIDE.NUM_CLASSES", str(C),
        "MODEL.ANCHOR_GENERATOR.SIZES", str(tiny.MODEL.ANCHOR_GENERATOR.SIZES),
        "INPUT.MIN_SIZE_TRAIN", "(96, 128)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "112",
        "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(2,)", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # 3 iterations: scores still near the prior, 0.01
        "OUTPUT_DIR", str(tmp_path / "run"),
    ]
    config = os.path.join(ROOT, "configs", "retinanet_R50_FPN_mg_coco.yaml")
    seen = []
    original = DatasetMapper.__call__

    def recording(self, d):
        out = original(self, d)
        seen.append(out["image"].shape)
        return out

    monkeypatch.setattr(DatasetMapper, "__call__", recording)
    train_net.main(train_net.argument_parser().parse_args(["--config-file", config, *opts]))
    monkeypatch.undo()
    assert {s[-2:] for s in seen} - {(128, 128)}, "detectron2's mapper keeps the aspect, not the paper's square"
    weights = tmp_path / "run" / "model_final.pth"
    assert weights.is_file()
    res = train_net.main(train_net.argument_parser().parse_args(
        ["--config-file", config, "--eval-only", *opts, "MODEL.WEIGHTS", str(weights)]))
    ap = res["bbox"]  # one test set: detectron2 returns its results unkeyed
    assert all(0 <= ap[k] <= 100 for k in ("AP", "AP50", "AP75")), ap  # NaN when nothing was detected
    DatasetCatalog.remove("rn_shapes_train"), DatasetCatalog.remove("rn_shapes_test")
