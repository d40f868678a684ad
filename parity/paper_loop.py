"""
The authors' training loop (main.py of zhanghengdev/MutualGuide at fd2c4cc) re-created around their own modules
(their Detector, preproc, PriorBox, MultiBoxLoss, detection_collate), on the CPU, from scratch, for the
side-by-side scripts. main.py itself cannot be imported (it parses the command line and trains at import), so
its three rules are written out here from reading it:

- parameter groups (`tencent_trick`): no weight decay on 1-D tensors and on names ending in ".bias";
- SGD, momentum 0.9, weight decay 5e-4;
- the LR before the step of iteration i (`adjust_learning_rate`), see `paper_lr`;
- an epoch is len(dataset) // batch iterations; each epoch starts a new shuffled DataLoader (4 workers in
  main.py), so the last, incomplete batch of every epoch is never drawn.
"""
import math
import os
import random
import sys

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_code import import_paper, paper_networks, set_paper_device  # noqa: E402

PAPER_FLOOR_LR = 1e-6  # main.py's warm-up start and cosine floor


def paper_lr(base_lr, iteration, warm_iter, max_iter):
    """main.py's `adjust_learning_rate`: linear from 1e-6 up to iteration warm_iter, then cosine down to 1e-6."""
    if iteration <= warm_iter:
        return PAPER_FLOOR_LR + (base_lr - PAPER_FLOOR_LR) * iteration / warm_iter
    progress = (iteration - warm_iter) / (max_iter - warm_iter)
    return PAPER_FLOOR_LR + (base_lr - PAPER_FLOOR_LR) * 0.5 * (1 + math.cos(progress * math.pi))


def paper_param_groups(model):
    """main.py's `tencent_trick`: [no-decay group (1-D tensors, biases), decay group]."""
    no_decay, decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay}]


def paper_optimizer(model, base_lr):
    return torch.optim.SGD(paper_param_groups(model), lr=base_lr, momentum=0.9, weight_decay=5e-4)


def build_paper_model(paper_repo, size, num_classes, backbone="ShuffleNetV2", neck="FPN", pretrained=""):
    """
    The authors' Detector (num_classes objects + its background slot). Their code downloads torchvision's
    ImageNet weights into its backbone; here nothing is downloaded: `pretrained` is that file on disk (loaded as
    their `load_pre_trained_weights` does, strict=False), or "" to start from scratch.
    """
    detector, *backbones = import_paper(
        paper_repo, "models.detector", "models.vgg_backbone", "models.resnet_backbone", "models.repvgg_backbone",
        "models.shufflenet_backbone",
    )
    for module in backbones:
        for obj in vars(module).values():
            if isinstance(obj, type) and hasattr(obj, "load_pre_trained_weights"):
                obj.load_pre_trained_weights = (
                    (lambda self: self.load_state_dict(torch.load(pretrained, map_location="cpu"), strict=False))
                    if pretrained else (lambda self: None)
                )
    return detector.Detector(size, num_classes + 1, paper_networks(backbone), paper_networks(neck))


def paper_criterion(paper_repo, num_classes, size, mutual_guide):
    """(MultiBoxLoss, priors) of the authors' code, as their main.py builds them (base anchor 24)."""
    loss_module, prior_module = import_paper(paper_repo, "utils.loss.multibox_loss", "utils.box.prior_box")
    priors = prior_module.PriorBox(24.0, size).forward()
    return loss_module.MultiBoxLoss(num_classes + 1, mutual_guide=mutual_guide), priors


class PaperDataset(Dataset):
    """
    Our dataset dicts read as the authors' datasets read theirs: cv2.imread, boxes [x1, y1, x2, y2, label 1..C]
    in float64 (the dicts' XYXY numbers), then their `preproc` (or none, for a plain resize).
    """

    def __init__(self, dicts, preproc):
        from detectron2.structures import BoxMode

        self.preproc, self.items = preproc, []
        for d in dicts:
            anns = [a for a in d.get("annotations", [])]
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) + [a["category_id"] + 1]
                     for a in anns]
            self.items.append((d["file_name"], np.array(boxes, np.float64).reshape(-1, 5)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        file_name, targets = self.items[index]
        return self.preproc(cv2.imread(file_name, cv2.IMREAD_COLOR), targets.copy())


def train_paper_loop(paper_repo, dicts, *, size, num_classes, backbone, neck, mutual_guide, base_lr, warm_iter,
                     max_iter, batch, workers, seed, log_every=50, on_step=None, pretrained="", device="cpu"):
    """
    main.py's training loop on `dicts` (our dataset dicts of the training set); returns the trained model.
    `seed` seeds torch, numpy and random (main.py leaves its seeding commented out). The model, the priors and
    each batch are placed with main.py's `.cuda()` calls, which reach `device` (set_paper_device).

    Images without objects are left out: the authors' `preproc` gives such an image a zero-size dummy box, whose
    encoded box target is log(0) = -inf, so one of them in a batch turns every later loss into NaN. Their own
    datasets have none (VOC has no such image, their COCO loader drops them); compare with ours trained with
    DATALOADER.FILTER_EMPTY_ANNOTATIONS True, as the benchmarks do.
    """
    dicts = [d for d in dicts if d.get("annotations")]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    data_augment, voc = import_paper(paper_repo, "data.data_augment", "data.voc0712")
    set_paper_device(device)
    model = build_paper_model(paper_repo, size, num_classes, backbone, neck, pretrained).train()
    model.cuda()
    optimizer = paper_optimizer(model, base_lr)
    criterion, priors = paper_criterion(paper_repo, num_classes, size, mutual_guide)
    priors = priors.cuda()
    dataset = PaperDataset(dicts, data_augment.preproc(size))
    epoch_size = len(dataset) // batch
    for iteration in range(max_iter):
        if iteration % epoch_size == 0:
            batches = iter(DataLoader(dataset, batch, shuffle=True, num_workers=workers,
                                      collate_fn=voc.detection_collate))  # torch seeds each worker's `random`
        lr = paper_lr(base_lr, iteration, warm_iter, max_iter)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = next(batches)
        images, targets = images.cuda(), [anno.cuda() for anno in targets]
        loss_l, loss_c = criterion(model(images), priors, targets)
        loss = loss_l + loss_c
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(iteration)
        if iteration % log_every == 0 or iteration == max_iter - 1:
            print(f"[paper loop] iter {iteration} lr {lr:.6f} loss {loss.item():.4f} (box {loss_l.item():.4f} "
                  f"cls {loss_c.item():.4f})", flush=True)
    return model
