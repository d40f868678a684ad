"""
detectron2's list of per-image dicts -> device tensors, once per batch.

Everything that depends on the number of images is done on the host, where reading a value costs no device
synchronisation: the images are stacked, the ground truth is scaled, clipped, checked and padded in one go, and
each goes to the device in one non-blocking copy (from pinned memory when the device is a GPU).
"""
from typing import Dict, List, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["GroundTruth", "batch_ground_truth", "batch_images", "to_device"]


class GroundTruth(NamedTuple):
    """
    Padded ground truth of a batch in the S x S frame: boxes [N, G, 4] XYXY, classes [N, G] long, valid [N, G]
    bool, and the number of boxes dropped for having no width or height (they are padding now).
    """

    boxes: Tensor
    classes: Tensor
    valid: Tensor
    num_dropped: int = 0


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """One host -> device copy; from pinned memory and non-blocking to a GPU, so the host does not wait for it."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def batch_images(batched_inputs: List[Dict], size: int, device: torch.device) -> Tensor:
    """
    The "image" tensors (C x H x W, any dtype) as one [N, C, S, S] tensor on `device`, still in the input dtype.
    Images that are not S x S are resized there (bilinear, aspect not kept, as the paper's test transform).
    """
    images = [x["image"] for x in batched_inputs]
    if all(im.shape[-2:] == (size, size) for im in images):
        if device.type == "cuda" and images[0].device.type == "cpu":
            # stacked straight into pinned memory: one host copy, then an asynchronous transfer
            pinned = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=True)
            return torch.stack(images, out=pinned).to(device, non_blocking=True)
        return torch.stack(images).to(device)
    resized = []
    for image in images:
        image = image.to(device)
        if image.shape[-2:] != (size, size):
            image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
        resized.append(image.float())
    return torch.stack(resized)


def batch_ground_truth(batched_inputs: List[Dict], size: int, device: torch.device) -> GroundTruth:
    """
    Each input's "instances" (`gt_boxes` in the pixels of its "image", `gt_classes`) in the S x S frame the
    network sees: scaled when the image is resized to S x S, clipped to it, boxes left without width or height
    dropped (counted in `num_dropped`; they stay as padding, `valid` False), padded to the largest number of boxes.

    Raises ValueError naming the input's file when it has no "instances" or a box is not finite.
    """
    rows = []
    for x in batched_inputs:
        if "instances" not in x:
            raise ValueError(f"Training input {x.get('file_name', '')!r} has no 'instances'")
        instances = x["instances"]
        h, w = x["image"].shape[-2:]
        boxes = instances.gt_boxes.tensor.detach().to("cpu", torch.float32)
        scale = boxes.new_tensor([size / w, size / h, size / w, size / h])
        classes = instances.gt_classes.to("cpu", torch.float32).unsqueeze(1)  # exact below 2**24 classes
        rows.append(torch.cat([boxes * scale, classes, torch.ones_like(classes)], dim=1))
    packed = pad_sequence(rows, batch_first=True) if rows else torch.zeros(0, 0, 6)  # [N, G, 6]
    boxes, present = packed[..., :4], packed[..., 5] > 0
    finite = torch.isfinite(boxes).all(-1) | ~present
    boxes.clamp_(min=0.0, max=float(size))
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    valid = present & nonempty
    # one host read for the batch
    all_finite, dropped = torch.stack([finite.all(), (present & ~nonempty).sum()]).tolist()
    if not all_finite:
        bad = [batched_inputs[i].get("file_name", f"input {i}") for i in (~finite).any(-1).nonzero().flatten()]
        raise ValueError(f"Ground-truth boxes with infinite or NaN coordinates in {bad}")
    packed[..., 5] = valid.float()
    packed = to_device(packed, device)
    return GroundTruth(packed[..., :4], packed[..., 4].long(), packed[..., 5] > 0, int(dropped))
