"""Checkpoints in the authors' key layout: the conversion both ways, and loading them into our detector."""
import pytest
import torch

from detectron2.modeling import build_model

from mutual_guide.checkpoint import CheckpointMismatchError, MutualGuideCheckpointer
from mutual_guide.checkpoint.paper_keys import convert_paper_state_dict, to_paper_state_dict


def test_convert_paper_state_dict_round_trip_and_idempotent(make_cfg):
    sd = build_model(make_cfg("ShuffleNetV2", "SSD", 320)).state_dict()
    assert list(convert_paper_state_dict(sd)) == list(sd)
    paper = to_paper_state_dict(sd)
    assert list(convert_paper_state_dict(paper)) == list(sd)
    wrapped = {"module." + k: v for k, v in paper.items()}
    assert list(convert_paper_state_dict({"state_dict": wrapped})) == list(sd)
    assert list(convert_paper_state_dict({"model": paper})) == list(sd)


def test_paper_checkpoint_loads_with_identical_outputs(tmp_path, make_cfg, randomize_batchnorm):
    torch.manual_seed(0)
    source = randomize_batchnorm(build_model(make_cfg("ShuffleNetV2", "PAFPN", 320))).eval()
    path = tmp_path / "paper.pth"
    torch.save({"module." + k: v for k, v in to_paper_state_dict(source.state_dict()).items()}, path)

    torch.manual_seed(1)
    target = build_model(make_cfg("ShuffleNetV2", "PAFPN", 320)).eval()
    x = torch.randn(1, 3, 128, 128)  # any multiple of 64 runs; smaller is faster
    with torch.no_grad():
        expected = source.predict(x)
        assert not torch.equal(target.predict(x)[0], expected[0])
        MutualGuideCheckpointer(target).load(str(path))
        logits, deltas = target.predict(x)
    assert torch.equal(logits, expected[0])
    assert torch.equal(deltas, expected[1])


def test_paper_checkpoint_with_other_num_classes_is_refused(tmp_path, make_cfg):
    source = build_model(make_cfg("ShuffleNetV2", "SSD", 320, num_classes=20))
    path = tmp_path / "voc.pth"
    torch.save(to_paper_state_dict(source.state_dict()), path)
    target = build_model(make_cfg("ShuffleNetV2", "SSD", 320, num_classes=80))
    with pytest.raises(CheckpointMismatchError, match="head.conf.0.weight"):
        MutualGuideCheckpointer(target).load(str(path))


def test_plain_detection_checkpointer_loads_an_authors_checkpoint(tmp_path, make_cfg):
    """The contract: detectron2's own DetectionCheckpointer accepts the authors' file, {"model": state_dict}."""
    from detectron2.checkpoint import DetectionCheckpointer

    torch.manual_seed(0)
    source = build_model(make_cfg("ShuffleNetV2", "SSD", 320, 20)).eval()
    paper = to_paper_state_dict(source.state_dict())
    assert any(k.startswith("loc.") for k in paper) and not any(k.startswith("head.") for k in paper)
    paper["dist_adapter.0.weight"] = torch.zeros(3)  # distillation tensors of the authors' later files
    path = tmp_path / "paper.pth"
    torch.save({"model": paper}, path)
    torch.manual_seed(1)
    target = build_model(make_cfg("ShuffleNetV2", "SSD", 320, 20)).eval()
    DetectionCheckpointer(target).load(str(path))
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        expected, got = source.predict(x), target.predict(x)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
