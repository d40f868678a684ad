"""
Our INPUT.MG_AUGMENT_RECIPE "authors_2023" against the authors' current `preproc_for_train` (data/data_augment.py
at 108b4a8, after their loader's resize to S x S), on the same image and boxes:

1. the same random draws given to both (their `random` module and our numpy draws replaced by one script):
   the S x S images must agree to half a grey level (ours is rounded to uint8, theirs stays float) and the boxes to
   1e-3 px, and both must have used the same number of draws (the same window accepted after the same rejections);
2. each with its own random numbers, the distributions of what comes out: window applied or not, canvas scale and
   aspect, boxes kept, box side and aspect, mirror. Two-sample Kolmogorov-Smirnov / two-proportion tests as
   check_paper_augmentation.py; a p-value under 0.001 is a mismatch.

    .venv/bin/python parity/check_authors_2023_augmentation.py --authors-repo DIR [--samples 2000] [--voc-mini DIR]
"""
import argparse
import math
import os
import random
import sys

import cv2
import numpy as np

from detectron2.config import get_cfg
from detectron2.data import transforms as T

import mutual_guide
from mutual_guide.data import MutualGuideDatasetMapper, crop_expand
from mutual_guide.data.augmentation import DetectionAugInput, PhotometricDistortion, plain_resize
from mutual_guide.data.crop_expand import CropExpandTransform, QuantizeTransform

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_2023_code import add_authors_repo_argument, load_authors_module  # noqa: E402
from check_paper_augmentation import ci_input, collect, compare, voc_inputs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # their preproc_for_test's


class Script:
    """One queue of drawn values, served to whichever function asks (their `random`, our numpy draws)."""

    def __init__(self, values):
        self.values = list(values)

    def _next(self, *_):
        return self.values.pop(0)

    random = random_sample = uniform = randrange = randint = _next


class ScriptedNumpy:
    """Stands in for numpy inside crop_expand.py: np.random is the script, everything else is numpy."""

    def __init__(self, script):
        self.random = script

    def __getattr__(self, name):
        return getattr(np, name)


def window_draws(rng, trials=20):
    """The draws of one crop-or-zoom-out, as their code asks for them: p, then per trial h, coin, r, y, x."""
    values = [rng.uniform(0, 1)]
    for _ in range(trials):
        values += [rng.uniform(0.25, 1.75), int(rng.randint(2)), rng.uniform(0.5, 1.0), rng.uniform(0.25, 0.75),
                   rng.uniform(0.25, 0.75)]
    return values


def square(image, boxes, size):
    """Their loader's first step (cv2.resize to S x S, linear) and normalised boxes; ours is plain_resize."""
    h, w = image.shape[:2]
    return cv2.resize(image, (size, size)), boxes / np.array([w, h, w, h], np.float64)


def theirs_to_bgr(tensor):
    """Their network input (RGB, /255, minus mean, over std, CHW) back to BGR pixel values (floats)."""
    rgb = (tensor.numpy().transpose(1, 2, 0) * STD + MEAN) * 255.0
    return rgb[:, :, ::-1]


def exact_check(da, image, boxes, size, samples, rng):
    """Largest pixel and box difference with the same draws, and the number of samples whose draws differed."""
    worst_pixel = worst_box = 0.0
    draws_differ = applied = 0
    original_np = crop_expand.np
    for _ in range(samples):
        distortion = PhotometricDistortion().get_transform(image)  # our draws (numpy): told to theirs below
        colour = []
        for value in (distortion.brightness, distortion.contrast, distortion.hue, distortion.saturation):
            colour += [0] if value is None else [1, value]
        window, mirror = window_draws(rng), int(rng.randint(2))

        ours_script = Script(window)
        crop_expand.np = ScriptedNumpy(ours_script)
        try:
            aug = DetectionAugInput(image, boxes=boxes)
            aug.transform(plain_resize(size).get_transform(image))
            aug.transform(distortion)
            tfm = crop_expand.RandomCropExpand().get_transform(aug.image, aug.boxes)
        finally:
            crop_expand.np = original_np
        applied += isinstance(tfm, CropExpandTransform)
        aug.transform(tfm)
        if mirror:
            aug.transform(T.HFlipTransform(aug.image.shape[1]))
        aug.transform(plain_resize(size).get_transform(aug.image))
        aug.transform(QuantizeTransform())

        # their script: the colour draws, the window draws ours used, the mirror; they must use all of it, no more
        their_script = Script(colour + window[: len(window) - len(ours_script.values)] + [mirror])
        da.random = their_script
        small, normalised = square(image, boxes, size)
        targets = np.hstack([normalised, np.ones((len(boxes), 1))])
        try:
            tensor, out = da.preproc_for_train(small, targets, size)
        except IndexError:  # they asked for more draws than ours used
            draws_differ += 1
            continue
        draws_differ += len(their_script.values) != 0
        worst_pixel = max(worst_pixel, float(np.abs(theirs_to_bgr(tensor) - aug.image).max()))
        their_boxes = out[:, :4] * size
        if their_boxes.shape != aug.boxes.shape:
            worst_box = math.inf
        else:
            worst_box = max(worst_box, float(np.abs(their_boxes - aug.boxes).max()) if len(out) else 0.0)
    da.random = random
    return worst_pixel, worst_box, draws_differ, applied


class TheirRecorder:
    """Runs their preproc_for_train and records what its crop-or-zoom-out and mirror did."""

    def __init__(self, da, size):
        self.da, self.size = da, size
        self._crop_expand, self._mirror = da._crop_expand, da._mirror
        da._crop_expand, da._mirror = self._record_window, self._record_mirror

    def _record_window(self, image, boxes, labels, **kwargs):
        out = self._crop_expand(image, boxes, labels, **kwargs)
        self.rec["window applied"] = out[0] is not image
        if self.rec["window applied"]:
            self.rec["canvas scale"] = math.sqrt(out[0].shape[0] * out[0].shape[1]) / image.shape[0]
            self.rec["canvas aspect (log)"] = math.log(out[0].shape[1] / out[0].shape[0])
        return out

    def _record_mirror(self, image, boxes):
        out = self._mirror(image, boxes)
        self.rec["mirrored"] = out[0] is not image
        return out

    def __call__(self, image, boxes):
        self.rec = {}
        small, normalised = square(image, boxes, self.size)
        _, out = self.da.preproc_for_train(small, np.hstack([normalised, np.ones((len(boxes), 1))]), self.size)
        return self.rec, out[:, :4] * self.size


class OurRecorder:
    """Runs our mapper's augmentation with the recipe and reads what it did from the transforms."""

    def __init__(self, size):
        cfg = get_cfg()
        mutual_guide.add_mutual_guide_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-MutualGuide.yaml"))
        cfg.INPUT.SIZE, cfg.INPUT.MG_AUGMENT_RECIPE, cfg.INPUT.MIN_BOX_SIDE_RATIO = size, "authors_2023", 0.0
        self.mapper, self.size = MutualGuideDatasetMapper(cfg, is_train=True), size

    def __call__(self, image, boxes):
        aug_input, tfms = self.mapper.augment(image, boxes)
        window = [t for t in tfms.transforms if isinstance(t, CropExpandTransform)]
        rec = {"window applied": bool(window)}
        if window:
            rec["canvas scale"] = math.sqrt(window[0].canvas_h * window[0].canvas_w) / self.size
            rec["canvas aspect (log)"] = math.log(window[0].canvas_w / window[0].canvas_h)
        rec["mirrored"] = any(isinstance(t, T.HFlipTransform) for t in tfms.transforms)
        return rec, aug_input.boxes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_authors_repo_argument(parser)
    parser.add_argument("--voc-mini", help="a VOC2007-layout folder (Annotations/, JPEGImages/) compared too")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--exact-samples", type=int, default=300)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    da = load_authors_module(args.authors_repo, "data/data_augment.py")
    random.seed(0)
    np.random.seed(0)
    rng = np.random.RandomState(1)

    inputs = ci_input() + (voc_inputs(args.voc_mini) if args.voc_mini else [])
    exact_ok = True
    for name, image, boxes in inputs:
        pixel, box, differ, applied = exact_check(da, image, boxes, args.size, args.exact_samples, rng)
        print(f"{name}, same draws, {args.exact_samples} samples ({applied} with a window): largest pixel "
              f"difference {pixel:.4f}, box difference {box:.2e} px, samples whose draws were used differently "
              f"{differ}")
        exact_ok &= pixel <= 0.5 + 1e-3 and box <= 1e-3 and differ == 0

    print("distributions, each with its own random numbers (column \"paper\": the authors' code at 108b4a8):")
    theirs, ours = TheirRecorder(da, args.size), OurRecorder(args.size)
    worst = 1.0
    for name, image, boxes in inputs:
        print(f"{name}: {len(boxes)} boxes, {args.samples} samples each")
        worst = min(worst, compare(collect(theirs, image, boxes, args.samples),
                                   collect(ours, image, boxes, args.samples)))
    ok = exact_ok and worst >= 1e-3
    print(f"smallest p-value {worst:.4f}; same draws agree: {exact_ok} -> {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
