"""Loading detectors: fine-tuning (MODEL.MUTUAL_GUIDE.FINETUNE) from a detector of 80 classes to a 3-class one,
anything else that does not fit still refused, and the authors' files through `train_net.py --eval-only`."""
import json
import math
import os

import pytest
import torch
import train_net

import detectron2.utils.comm as comm
from detectron2.engine import launch
from detectron2.engine.launch import _find_free_port
from detectron2.modeling import build_model

import mutual_guide.modeling.meta_arch.detector  # noqa: F401  (registers the detector)
from mutual_guide.checkpoint import CheckpointMismatchError, MutualGuideCheckpointer
from mutual_guide.checkpoint.paper_keys import to_paper_state_dict
from mutual_guide.data import make_synthetic_dataset

SIZE = 128


def noisy_detector(cfg, seed=0):
    """The detector of `cfg` whose every float tensor, BatchNorm statistics included, is moved by noise."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(tensor * 0.1 * torch.randn_like(tensor) + 0.01 * torch.randn_like(tensor))
    return model


@pytest.fixture
def detector(make_cfg):
    """detector(num_classes, backbone="ShuffleNetV2", seed=0): a noisy CPU detector at 128 px."""

    def build(num_classes, backbone="ShuffleNetV2", seed=0):
        return noisy_detector(make_cfg(backbone, "FPN", SIZE, num_classes), seed)

    return build


def save(model, path, authors=False):
    sd = model.state_dict()
    if authors:  # the authors' names, saved through DataParallel as their main.py does
        sd = {"module." + k: v for k, v in to_paper_state_dict(sd).items()}
    torch.save(sd if authors else {"model": sd, "iteration": 99}, path)
    return str(path)


def class_keys(model):
    return {"head.conf." + k for k in model.head.conf.state_dict()}


@pytest.mark.slow
@pytest.mark.parametrize("authors", [False, True], ids=["ours", "authors"])
def test_80_class_checkpoint_starts_a_3_class_detector(tmp_path, logged, authors, detector):
    source = detector(80)
    path = save(source, tmp_path / "coco.pth", authors)
    target = detector(3, seed=1)
    with torch.no_grad():  # whatever the class layers held before loading must not survive it
        for p in target.head.conf.parameters():
            p.fill_(5.0)

    messages = logged("mutual_guide.checkpoint.checkpointer")
    MutualGuideCheckpointer(target, finetune=True).load(path)

    loaded, expected = target.state_dict(), source.state_dict()
    reinitialised = class_keys(target)
    assert len(reinitialised) == 8  # weight and bias of 4 levels
    for key, value in loaded.items():
        if key not in reinitialised:
            assert torch.equal(value, expected[key]), f"{key} differs from the checkpoint's"
    for level, conv in enumerate(target.head.conf):
        # RetinaNet's prior initialisation: every sigmoid starts at 0.01, weights N(0, 0.01)
        torch.testing.assert_close(conv.bias, torch.full((6 * 3,), -math.log(99.0)))
        assert abs(conv.weight.std().item() - 0.01) < 0.002 and abs(conv.weight.mean().item()) < 0.002, level
    message = "\n".join(messages)
    for key in reinitialised:
        assert key in message
    assert "(480, 128, 3, 3) in the file, (18, 128, 3, 3) in the model" in message


def test_2023_head_keeps_its_conv_units_and_restarts_only_the_class_layers(tmp_path, make_cfg):
    def build(num_classes, seed):
        cfg = make_cfg("ShuffleNetV2_2023", "PAFPN2023", 128, num_classes)
        cfg.defrost()
        cfg.MODEL.MUTUAL_GUIDE.NETWORK = "mg2023"
        cfg.MODEL.BACKBONE.VERSION = "1.0x"
        cfg.MODEL.NECK.CONV_BLOCK = "depthwise"
        return noisy_detector(cfg, seed)

    source, target = build(80, 0), build(3, 1)
    MutualGuideCheckpointer(target, finetune=True).load(save(source, tmp_path / "coco.pth"))
    loaded, expected = target.state_dict(), source.state_dict()
    restarted = {k for k in loaded if k.startswith("head.conf.") and k.split(".")[3] == "1"}
    assert len(restarted) == 2 * len(target.head.conf)  # weight and bias of the 1x1 layer of each level
    for key, value in loaded.items():
        if key in restarted:
            assert value.shape != expected[key].shape
        else:  # the conv units of head.conf included
            assert torch.equal(value, expected[key]), f"{key} differs from the checkpoint's"


@pytest.mark.slow
def test_finetune_still_refuses_another_backbone(tmp_path, detector):
    path = save(detector(80, backbone="ResNet18"), tmp_path / "resnet.pth")
    target = detector(3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"resnet\.pth(.|\n)*backbone\.\S+: (missing|not in the model)"):
        MutualGuideCheckpointer(target, finetune=True).load(path)
    # refused before anything was copied
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_finetune_still_refuses_another_number_of_levels(tmp_path, detector, make_cfg):
    """A 512-pixel detector has a fifth pyramid level: its box layers do not fit a 128-pixel one."""
    torch.manual_seed(0)
    path = save(build_model(make_cfg("ShuffleNetV2", "FPN", 512, 80)), tmp_path / "five_levels.pth")
    with pytest.raises(CheckpointMismatchError, match=r"head\.loc\.4\.weight: not in the model"):
        MutualGuideCheckpointer(detector(3), finetune=True).load(path)


@pytest.mark.slow
def test_without_finetune_other_classes_are_refused_and_the_fix_named(tmp_path, detector):
    path = save(detector(80), tmp_path / "coco.pth", authors=True)
    target = detector(3, seed=1)
    before = target.head.conf[0].weight.clone()
    with pytest.raises(CheckpointMismatchError, match=r"coco\.pth(.|\n)*FINETUNE True(.|\n)*head\.conf\.0\.weight"):
        MutualGuideCheckpointer(target).load(path)
    assert torch.equal(target.head.conf[0].weight, before)


# ---------------------------------------------------------------------------- training from it
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftshapes")
    return make_synthetic_dataset(
        str(root), fmt="coco", num_train=8, num_test=4, image_size=SIZE, seed=5, name="ftshapes"
    )


@pytest.mark.slow
def test_training_runs_after_finetuning_from_80_classes(shapes, train_args, tmp_path, detector):
    path = save(detector(80, backbone="ResNet18"), tmp_path / "coco.pth")
    out = tmp_path / "run"
    args = train_args(shapes, out, "MODEL.WEIGHTS", path, "MODEL.MUTUAL_GUIDE.FINETUNE", "True", "SOLVER.MAX_ITER", 3)
    results = train_net.main(args)
    assert set(results["bbox"]) >= {"AP", "AP50"}
    with open(out / "metrics.json") as f:
        losses = [row["total_loss"] for row in map(json.loads, f) if "total_loss" in row]
    assert losses and all(math.isfinite(v) for v in losses)
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["model"]["head.conf.0.weight"].shape == (6 * 3, 128, 3, 3)


@pytest.mark.slow
def test_eval_only_reads_the_authors_file_as_ours(shapes, train_args, tmp_path, detector):
    """The contract: `train_net.py --eval-only MODEL.WEIGHTS <authors' file>` evaluates the same network."""

    def evaluate(model, authors):
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        with torch.no_grad():  # scores above the test threshold, so that there are detections to compare
            for conv in model.head.conf:
                conv.bias.fill_(-2.0)
        path = save(model, tmp_path / f"weights{len(list(tmp_path.iterdir()))}.pth", authors)
        train_net.main(train_args(shapes, out, "MODEL.WEIGHTS", path, eval_only=True))
        with open(out / "inference" / "ftshapes_test" / "coco_instances_results.json") as f:
            return json.load(f)

    ours = evaluate(detector(3, backbone="ResNet18"), authors=False)
    assert len(ours) > 0
    assert evaluate(detector(3, backbone="ResNet18"), authors=True) == ours
    assert evaluate(detector(3, backbone="ResNet18", seed=2), authors=True) != ours  # the weights were used


@pytest.mark.slow
def test_finetune_without_weights_is_refused(shapes, train_args, tmp_path):
    args = train_args(shapes, tmp_path, "MODEL.MUTUAL_GUIDE.FINETUNE", "True", "SOLVER.MAX_ITER", 1)
    with pytest.raises(ValueError, match="FINETUNE True needs MODEL.WEIGHTS"):
        train_net.main(args)


# ---------------------------------------------------------------------------- two processes
def _load_in_each_process(path, output_dir, cfg):
    torch.manual_seed(100 + comm.get_rank())  # each process would draw different class layers
    target = noisy_detector(cfg, seed=100 + comm.get_rank())
    MutualGuideCheckpointer(target, finetune=True).load(path)
    torch.save(target.head.conf.state_dict(), os.path.join(output_dir, f"conf_rank{comm.get_rank()}.pth"))
    if torch.distributed.is_initialized():  # gloo's threads end before the process does (an abort otherwise)
        comm.synchronize()
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_processes_start_the_new_class_layers_alike(tmp_path, detector, make_cfg):
    path = save(detector(80), tmp_path / "coco.pth")
    cfg = make_cfg("ShuffleNetV2", "FPN", SIZE, 3)
    launch(_load_in_each_process, 2, dist_url=f"tcp://127.0.0.1:{_find_free_port()}", args=(path, str(tmp_path), cfg))
    rank0, rank1 = (torch.load(tmp_path / f"conf_rank{r}.pth") for r in (0, 1))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
