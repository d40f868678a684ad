"""
detectron2's list of per-image dicts -> device tensors, once per batch.

Everything that depends on the number of images is done on the host, where reading a value costs no device
synchronisation: the images are stacked, the ground truth is scaled, checked and padded in one go, and each goes
to the device in one non-blocking copy (from pinned memory when the device is a GPU).

Ground truth is clipped to its image and emptied boxes dropped in one place, the dataset mapper
(`data.mapper.annotations_to_boxes`, which counts and logs them), as detectron2's DatasetMapper does before its
models see the boxes; here a box without width or height is an error, not a second silent drop.
"""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["GroundTruth", "batch_ground_truth", "batch_images", "to_device"]


class GroundTruth(NamedTuple):
    """
    Padded ground truth of a batch in the S x S frame: boxes [N, G, 4] XYXY, classes [N, G] long, valid [N, G]
    bool (False on padding), and the number of boxes of each image as host integers (each image's boxes come
    first), so that the assignment can skip the padding without reading `valid` back from the device.
    """

    boxes: Tensor
    classes: Tensor
    valid: Tensor
    counts: Optional[Tuple[int, ...]] = None


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """One host -> device copy; from pinned memory and non-blocking to a GPU, so the host does not wait for it."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def batch_images(batched_inputs: List[Dict], size: int, device: torch.device) -> Tensor:
    """
    The "image" tensors (C x S x S, any dtype) as one [N, C, S, S] tensor on `device`, in the input dtype.
    Resizing is the dataset mapper's and the predictor's (one resize, data/resize.py), never the model's: an image
    of another size is refused, naming its file.
    """
    images = [x["image"] for x in batched_inputs]
    for x, im in zip(batched_inputs, images):
        if im.shape[-2:] != (size, size):
            raise ValueError(
                f"Image {x.get('file_name', '')!r} reaches the detector as {tuple(im.shape[-2:])}; it takes "
                f"INPUT.SIZE x INPUT.SIZE ({size} x {size}) images, resized by MutualGuideDatasetMapper or "
                "MutualGuidePredictor (the one resize of data/resize.py)"
            )
    if device.type == "cuda" and all(im.device.type == "cpu" for im in images):
        # stacked straight into pinned memory: one host copy, then an asynchronous transfer
        pinned = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=True)
        return torch.stack(images, out=pinned).to(device, non_blocking=True)
    return torch.stack([im.to(device) for im in images])


def batch_ground_truth(batched_inputs: List[Dict], size: int, device: torch.device) -> GroundTruth:
    """
    Each input's "instances" (`gt_boxes` in the pixels of its "image", `gt_classes`) in the S x S frame the
    network sees: scaled when the image is resized to S x S, padded to the largest number of boxes.

    Raises ValueError naming the input's file when it has no "instances", or a box is not finite or has no
    width or height (the mapper drops those: see the module's docstring).
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
    boxes, valid = packed[..., :4], packed[..., 5] > 0
    finite = torch.isfinite(boxes).all(-1)
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # False for NaN
    bad = valid & ~(finite & nonempty)
    if bad.any().tolist():  # one look at the values for the batch, on the host (`tolist` dispatches no operator)
        for i, row in zip(*bad.nonzero(as_tuple=True)):
            name = batched_inputs[i].get("file_name", f"input {int(i)}")
            raise ValueError(
                f"Ground-truth box {boxes[i, row].tolist()} of {name!r} (in the {size} x {size} frame) is "
                + ("not finite" if not finite[i, row] else "empty (no width or height)")
                + ": the dataset mapper must clip boxes to the image and drop empty ones, as "
                "MutualGuideDatasetMapper and detectron2's DatasetMapper do"
            )
    counts = tuple(len(row) for row in rows)
    packed = to_device(packed, device)
    return GroundTruth(packed[..., :4], packed[..., 4].long(), packed[..., 5] > 0, counts)
