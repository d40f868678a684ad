"""The Trainer's own choices: the training loader's memory pinning."""
import uuid

import pytest
import torch
from train_net import Trainer


from mutual_guide.data import make_synthetic_dataset, register_custom_datasets


@pytest.mark.parametrize("device, cuda, pin, expected", [
    ("cuda", True, True, True), ("cuda", True, False, False), ("cpu", True, True, False), ("cuda", False, True, False),
])


def test_train_loader_pins_memory_only_for_cuda(tmp_path, monkeypatch, device, cuda, pin, expected, make_cfg):
    name = f"pin_{uuid.uuid4().hex[:8]}"
    data = make_synthetic_dataset(str(tmp_path), "coco", num_train=4, num_test=1, image_size=64, name=name)
    cfg = make_cfg(size=64, num_classes=3)
    cfg.DATASETS.CUSTOM = data["custom_specs"]
    cfg.DATASETS.TRAIN = (f"{name}_train",)
    cfg.MODEL.DEVICE, cfg.DATALOADER.PIN_MEMORY = device, pin
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, 0
    register_custom_datasets(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    loader = Trainer.build_train_loader(cfg)
    # no aspect-ratio grouping (the authors' code has none): detectron2 then returns torch's DataLoader itself
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert loader.pin_memory is expected
