"""
Our train-time augmentation against the authors' `preproc` (data/data_augment.py of zhanghengdev/MutualGuide at
fd2c4cc), on the same images and boxes, many times each:

1. the colour distortion with the same drawn values: ours and the authors' `_distort` must give the same pixels;
2. the distributions of what the whole pipeline produces: crop (how often, area, aspect, the smallest IoU of a
   box with it), zoom-out (how often, canvas scale and aspect), interpolation, fall-back, boxes out (how many
   kept, side and aspect in the S x S frame), and colour statistics of the distortion. Continuous values are
   compared with a two-sample Kolmogorov-Smirnov test, frequencies with a two-proportion z-test; a p-value
   under 0.001 is a mismatch.

    .venv/bin/python parity/check_paper_augmentation.py --paper-repo <checkout> [--samples 2000] [--voc-mini DIR]
    .venv/bin/python parity/check_paper_augmentation.py --paper-repo <checkout> --ci-input --samples 20000

--ci-input runs on the generated image of tests/test_augmentation_distribution.py and prints the authors' means
and standard deviations that the test holds as constants.
"""
import argparse
import math
import os
import random
import sys
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from detectron2.config import get_cfg

import mutual_guide
from mutual_guide.data import MutualGuideDatasetMapper
from mutual_guide.data.augmentation import (
    CV2_INTERPOLATIONS,
    CropTransform,
    ExpandTransform,
    PhotometricDistortion,
    PhotometricTransform,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_code import add_paper_repo_argument, import_paper  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERP_NAMES = {cv2.INTER_LINEAR: "linear", cv2.INTER_CUBIC: "cubic", cv2.INTER_AREA: "area",
                cv2.INTER_NEAREST: "nearest", cv2.INTER_LANCZOS4: "lanczos"}


# ----------------------------------------------------------------------------- inputs
def ci_input():
    """The generated image and boxes of tests/test_augmentation_distribution.py (keep the two in step)."""
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, size=(150, 200, 3)).astype(np.uint8)
    boxes = np.array([[10, 20, 70, 90], [100, 5, 190, 60], [40, 100, 58, 118], [150, 110, 162, 146]], np.float32)
    return [("generated 200x150", image, boxes)]


def voc_inputs(root):
    """Images and boxes (the XML's numbers, as the authors' code reads them) of a VOC folder."""
    out = []
    for name in sorted(os.listdir(os.path.join(root, "Annotations"))):
        tree = ET.parse(os.path.join(root, "Annotations", name)).getroot()
        boxes = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in tree.iter("object")]
        image = cv2.imread(os.path.join(root, "JPEGImages", name.replace(".xml", ".jpg")))
        out.append((f"VOC {name[:-4]}", image, np.array(boxes, np.float32)))
    return out


# ----------------------------------------------------------------------------- the two pipelines, instrumented
class PaperRecorder:
    """Runs the authors' preproc and records, per sample, what its steps did (by wrapping its module functions)."""

    def __init__(self, data_augment, size):
        self.da, self.size = data_augment, size
        self.preproc = data_augment.preproc(size)
        self._orig = {k: getattr(data_augment, k) for k in ("_crop", "_expand", "preproc_for_test")}
        data_augment._crop, data_augment._expand = self._crop, self._expand
        data_augment.preproc_for_test = self._resize

    def _crop(self, image, boxes, labels):
        out = self._orig["_crop"](image, boxes, labels)
        h, w = image.shape[:2]
        hc, wc = out[0].shape[:2]
        self.rec["cropped"] = (hc, wc) != (h, w)
        if self.rec["cropped"]:
            self.rec["crop area"] = hc * wc / (h * w)
            self.rec["crop aspect (log)"] = math.log((wc / w) / (hc / h))
            self.rec["crop min IoU"] = self._min_iou(image, out[0], boxes)
        return out

    def _min_iou(self, image, crop, boxes):
        # where the crop came from: the crop is a view of the image, find its offset from the memory address
        offset = (crop.__array_interface__["data"][0] - image.__array_interface__["data"][0]) // image.strides[1]
        top, left = divmod(offset, image.shape[1])
        roi = np.array([[left, top, left + crop.shape[1], top + crop.shape[0]]], np.float64)
        return float(self.da.matrix_iou(boxes, roi).min())

    def _expand(self, image, boxes, labels, fill, p=0.6):
        out = self._orig["_expand"](image, boxes, labels, fill, p)
        h, w = image.shape[:2]
        he, we = out[0].shape[:2]
        self.rec["expanded"] = (he, we) != (h, w)
        if self.rec["expanded"]:
            self.rec["canvas scale"] = math.sqrt(he * we / (h * w))
            self.rec["canvas aspect (log)"] = math.log((we / w) / (he / h))
        return out

    def _resize(self, image, insize, mean):
        self.rec["resizes"] = self.rec.get("resizes", 0) + 1
        # the authors' code draws its interpolation with random.randrange(5): record it by drawing the same way
        state = random.getstate()
        self.rec["interpolation"] = INTERP_NAMES[CV2_INTERPOLATIONS[random.randrange(5)]]
        random.setstate(state)
        return self._orig["preproc_for_test"](image, insize, mean)

    def __call__(self, image, boxes):
        self.rec = {}
        targets = np.hstack([boxes, np.ones((len(boxes), 1), np.float32)]).astype(np.float64)
        _, out = self.preproc(image, targets)
        self.rec["fallback"] = self.rec.pop("resizes") == 2
        return self.rec, out[:, :4] * self.size


class OurRecorder:
    """Runs our mapper's augmentation (the authors' fall-back included) and reads what it did from the transforms."""

    def __init__(self, size):
        cfg = get_cfg()
        mutual_guide.add_mutual_guide_config(cfg)
        # the paper's pixel mean, the zoom-out's fill
        cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-MutualGuide.yaml"))
        cfg.INPUT.SIZE = size
        self.mapper = MutualGuideDatasetMapper(cfg, is_train=True)

    def __call__(self, image, boxes):
        rec = {}
        aug_input, tfms = self.mapper.augment(image, boxes)
        h, w = image.shape[:2]
        crop = [t for t in tfms.transforms if isinstance(t, CropTransform)]
        rec["cropped"] = bool(crop)
        if crop:
            c = crop[0]
            rec["crop area"] = c.w * c.h / (w * h)
            rec["crop aspect (log)"] = math.log((c.w / w) / (c.h / h))
            roi = np.array([[c.x0, c.y0, c.x0 + c.w, c.y0 + c.h]], np.float64)
            rec["crop min IoU"] = float(_iou(boxes.astype(np.float64), roi).min())
            h, w = c.h, c.w
        expand = [t for t in tfms.transforms if isinstance(t, ExpandTransform)]
        rec["expanded"] = bool(expand)
        if expand:
            e = expand[0]
            he, we = h + e.y0 + e.y1, w + e.x0 + e.x1
            rec["canvas scale"] = math.sqrt(he * we / (h * w))
            rec["canvas aspect (log)"] = math.log((we / w) / (he / h))
        rec["fallback"] = not len(aug_input.boxes)
        if rec["fallback"]:
            tfm = self.mapper.fallback_resize.get_transform(image)
            out_boxes = boxes * np.array([tfm.new_w / tfm.w, tfm.new_h / tfm.h] * 2, np.float32)
            rec["interpolation"] = INTERP_NAMES[tfm.interp]
        else:
            out_boxes = aug_input.boxes
            rec["interpolation"] = INTERP_NAMES[tfms.transforms[-1].interp]
        return rec, out_boxes


def _iou(a, b):
    lt, rb = np.maximum(a[:, None, :2], b[:, :2]), np.minimum(a[:, None, 2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    return inter / (np.prod(a[:, 2:] - a[:, :2], 1)[:, None] + np.prod(b[:, 2:] - b[:, :2], 1) - inter)


def collect(recorder, image, boxes, samples):
    values = {}
    for _ in range(samples):
        rec, out = recorder(image, boxes)
        out = np.asarray(out, np.float64).reshape(-1, 4)
        wh = out[:, 2:] - out[:, :2]
        rec["boxes kept"] = len(out) / len(boxes)
        # one value per sample (the boxes of one sample are not independent): their mean, and whether any is small
        rec["box side (px), mean of a sample"] = np.sqrt(wh[:, 0] * wh[:, 1]).mean()
        rec["box aspect (log), mean of a sample"] = np.log(wh[:, 0] / wh[:, 1]).mean()
        rec["a box side < 8 px"] = bool((np.minimum(wh[:, 0], wh[:, 1]) < 8).any())
        for key, v in rec.items():
            values.setdefault(key, []).append(v)
    return values


def colour_statistics(distort, image, samples):
    """Per sample: mean B, G, R change and mean HSV saturation change of the distorted image."""
    hsv_in = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float64)
    mean_in = image.reshape(-1, 3).mean(0)
    stats = {k: [] for k in ("colour: mean B shift", "colour: mean G shift", "colour: mean R shift",
                             "colour: mean saturation shift", "colour: hue changed")}
    for _ in range(samples):
        out = distort(image)
        shift = out.reshape(-1, 3).mean(0) - mean_in
        for i, c in enumerate("BGR"):
            stats[f"colour: mean {c} shift"].append(shift[i])
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.float64)
        stats["colour: mean saturation shift"].append(hsv[..., 1].mean() - hsv_in[..., 1].mean())
        stats["colour: hue changed"].append(np.abs(hsv[..., 0] - hsv_in[..., 0]).mean() > 4)
    return stats


# ----------------------------------------------------------------------------- tests
def ks_test(a, b):
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value (scipy is not a dependency here)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    d = np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max()
    lam = math.sqrt(len(a) * len(b) / (len(a) + len(b))) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101)) if lam > 0 else 1.0
    return d, min(max(p, 0.0), 1.0)


def proportion_test(a, b):
    pa, pb = np.mean(a), np.mean(b)
    pooled = (np.sum(a) + np.sum(b)) / (len(a) + len(b))
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / len(a) + 1 / len(b)))
    return pa, pb, math.erfc(abs(pa - pb) / se / math.sqrt(2))


def compare(paper, ours, alpha=1e-3):
    worst = 1.0
    for key in paper:
        a, b = np.asarray(paper[key]), np.asarray(ours.get(key, []))
        if key == "interpolation":
            for name in INTERP_NAMES.values():
                pa, pb, p = proportion_test(a == name, b == name)
                worst = min(worst, p)
                print(f"  {'interpolation ' + name:32s} paper {pa:8.4f}  ours {pb:8.4f}  (two-proportion p {p:.3f})")
        elif a.dtype == bool:
            pa, pb, p = proportion_test(a, b)
            worst = min(worst, p)
            print(f"  {key:32s} paper {pa:8.4f}  ours {pb:8.4f}  (two-proportion p {p:.3f})")
        else:
            # rounded: an unaugmented sample gives the same box in both up to float rounding (a point mass that
            # KS would otherwise see as two)
            d, p = ks_test(np.round(a, 3), np.round(b, 3))
            worst = min(worst, p)
            qa, qb = np.percentile(a, [10, 50, 90]), np.percentile(b, [10, 50, 90])
            print(f"  {key:32s} paper q10/50/90 {qa[0]:7.3f} {qa[1]:7.3f} {qa[2]:7.3f}  ours {qb[0]:7.3f} "
                  f"{qb[1]:7.3f} {qb[2]:7.3f}  mean {a.mean():7.3f} / {b.mean():7.3f}  (n {len(a)}/{len(b)}, "
                  f"KS D {d:.3f}, p {p:.3f})")
    return worst


def exact_colour_check(data_augment, image, trials=200):
    """Ours with drawn values against the authors' `_distort` told the same values: largest pixel difference."""

    class Scripted:  # stands in for the authors' `random` module inside `_distort`
        def __init__(self, values):
            self.values = list(values)

        def randrange(self, n):
            return self.values.pop(0)

        uniform = randint = lambda self, a, b: self.values.pop(0)

    worst = 0
    real_random = data_augment.random
    try:
        for _ in range(trials):
            tfm = PhotometricDistortion().get_transform(image)
            script = []
            for value in (tfm.brightness, tfm.contrast, tfm.hue, tfm.saturation):
                script += [0] if value is None else [1, value]
            data_augment.random = Scripted(script)
            paper_out = data_augment._distort(image)
            worst = max(worst, int(np.abs(paper_out.astype(int) - tfm.apply_image(image).astype(int)).max()))
    finally:
        data_augment.random = real_random
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_paper_repo_argument(parser)
    parser.add_argument("--voc-mini", help="a VOC2007-layout folder (Annotations/, JPEGImages/) whose images are "
                        "compared too; default: only the generated input")
    parser.add_argument("--ci-input", action="store_true", help="the generated input of the CI test, constants out")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    data_augment = import_paper(args.paper_repo, "data.data_augment")
    random.seed(0)
    np.random.seed(0)

    inputs = ci_input()
    if not args.ci_input and args.voc_mini:
        inputs += voc_inputs(args.voc_mini)
    worst_pixel = max(exact_colour_check(data_augment, image) for _, image, _ in inputs)
    print(f"colour distortion with the same drawn values: largest pixel difference ours vs the authors' = "
          f"{worst_pixel}")

    paper, ours = PaperRecorder(data_augment, args.size), OurRecorder(args.size)
    worst = 1.0
    for name, image, boxes in inputs:
        print(f"{name}: {len(boxes)} boxes, {args.samples} samples each")
        paper_values = collect(paper, image, boxes, args.samples)
        our_values = collect(ours, image, boxes, args.samples)
        paper_values.update(colour_statistics(data_augment._distort, image, args.samples))
        distortion = PhotometricDistortion()
        our_values.update(colour_statistics(lambda im: distortion.get_transform(im).apply_image(im), image,
                                            args.samples))
        worst = min(worst, compare(paper_values, our_values))
        if args.ci_input:
            print("  the authors' constants (mean, std, n):")
            for key, v in paper_values.items():
                if key != "interpolation":
                    v = np.asarray(v, np.float64)
                    print(f"    {key!r}: ({v.mean():.4f}, {v.std():.4f}, {len(v)}),")
    ok = worst_pixel == 0 and worst >= 1e-3
    print(f"smallest p-value {worst:.4f}; pixels identical: {worst_pixel == 0} -> {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
