"""The candidates NMS removed, each with the kept detection that removed it: against torchvision's nms and a
plain greedy NMS; recorded by the detector only when asked, its detections unchanged."""
import pytest
import torch
import torchvision

from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

from mutual_guide.modeling.postprocessing import REMOVED_CANDIDATES, nms_with_removed, removed_candidates_recorded


def greedy_nms(boxes, scores, classes, thresh):
    """Plain greedy NMS per class: {candidate: None if kept, else the candidate that suppressed it}."""
    ious = pairwise_iou(Boxes(boxes), Boxes(boxes))
    kept, fate = [], {}
    for i in torch.argsort(scores, descending=True).tolist():
        remover = next((k for k in kept if classes[k] == classes[i] and ious[i, k] > thresh), None)
        fate[i] = remover
        if remover is None:
            kept.append(i)
    return kept, fate


def clustered_candidates(seed, n=300, num_classes=3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=g) * 200
    pick = torch.randint(0, 8, (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * 6
    wh = 20 + torch.rand(n, 2, generator=g) * 20
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randperm(n, generator=g).float() / n + 0.001  # distinct: one greedy order
    return boxes, scores, torch.randint(0, num_classes, (n,), generator=g)


@pytest.mark.parametrize("max_detections", [1000, 12])
def test_removed_and_their_removers_are_greedy_nms(max_detections):
    for seed in range(3):
        boxes, scores, classes = clustered_candidates(seed)
        kept, removed, removed_by = nms_with_removed(boxes, scores, classes, 0.5, max_detections)
        expected_kept = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
        assert torch.equal(kept, expected_kept[:max_detections])
        greedy_kept, fate = greedy_nms(boxes, scores, classes, 0.5)
        assert sorted(greedy_kept) == sorted(expected_kept.tolist())
        # every removed candidate whose remover is among the kept detections, with that remover
        in_output = set(kept.tolist())
        expected = {i: r for i, r in fate.items() if r is not None and r in in_output}
        got = {i: kept[p].item() for i, p in zip(removed.tolist(), removed_by.tolist())}
        assert got == expected
        num_suppressed = len(fate) - len(greedy_kept)
        assert num_suppressed > 100  # clustered: NMS has work to do
        # with the cap, the candidates of cut detections are left out; without it, none is
        assert (len(got) == num_suppressed) == (max_detections >= len(greedy_kept)) and len(got) > 0


def test_nothing_to_remove():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    kept, removed, removed_by = nms_with_removed(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5, 100)
    assert kept.tolist() == [0, 1] and removed.numel() == 0 and removed_by.numel() == 0


def check_removed(output, nms_thresh, check_iou=True):
    detections, removed = output["instances"], output[REMOVED_CANDIDATES]
    assert len(removed) > 0
    owner = removed.kept_index
    assert owner.min() >= 0 and owner.max() < len(detections)
    assert torch.equal(removed.pred_classes, detections.pred_classes[owner])
    assert (removed.scores <= detections.scores[owner]).all()
    if check_iou:
        ious = pairwise_iou(removed.pred_boxes, detections.pred_boxes)
        assert (ious[torch.arange(len(removed)), owner] > nms_thresh - 1e-4).all()


def test_the_detector_gives_them_only_when_asked(make_cfg):
    cfg = make_cfg("ShuffleNetV2", "SSD", 128, 3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    inputs = [{"image": image, "height": 200, "width": 300}]
    with torch.no_grad():
        plain = model(inputs)[0]
        with removed_candidates_recorded(model):
            recorded = model(inputs)[0]
        after = model(inputs)[0]
    assert REMOVED_CANDIDATES not in plain and REMOVED_CANDIDATES not in after
    assert not model.record_removed_candidates
    for key in ("pred_boxes", "scores", "pred_classes"):
        a, b = plain["instances"].get(key), recorded["instances"].get(key)
        assert torch.equal(getattr(a, "tensor", a), getattr(b, "tensor", b))
    assert recorded[REMOVED_CANDIDATES].image_size == (200, 300)
    # x and y are scaled apart: IoU does not change, so the NMS threshold still holds in the output's pixels
    check_removed(recorded, cfg.MODEL.MUTUAL_GUIDE.NMS_THRESH_TEST)
