"""
Our augmentation's distributions locked to the authors': means measured from the authors' `preproc` (fd2c4cc) with
`parity/check_paper_augmentation.py --ci-input --samples 20000` on the generated input below; ours must lie
within 4 standard errors of sampling (ours from N samples, the authors' from their n), a z-test that a wrong
order, canvas, crop sampler, colour range or size rule fails (the order and canvas of the SSD recipe this
replaced move "canvas aspect" by 0.14 and "box side" by several pixels).
"""
import math

import numpy as np
import pytest

from mutual_guide.data import MutualGuideDatasetMapper
from mutual_guide.data.augmentation import CropTransform, ExpandTransform, PhotometricDistortion

N = 800
# statistic: (mean, standard deviation, samples) of the authors' code
PAPER = {
    "cropped": (0.4950, 0.5000, 20000),
    "crop area": (0.5020, 0.2544, 9900),
    "crop aspect (log)": (0.1077, 0.3178, 9900),
    "expanded": (0.6008, 0.4897, 20000),
    "canvas scale": (2.4829, 0.8646, 12017),
    "canvas aspect (log)": (0.1414, 0.3675, 12017),
    "boxes kept": (0.8044, 0.2896, 20000),
    "box side (px), mean of a sample": (67.0464, 44.3591, 20000),
    "box aspect (log), mean of a sample": (-0.5506, 0.4123, 20000),
    "a box side < 8 px": (0.2355, 0.4243, 20000),
    "colour: mean B shift": (-1.2416, 27.2585, 20000),
    "colour: mean saturation shift": (-4.3883, 30.7031, 20000),
    "colour: hue changed": (0.5060, 0.5000, 20000),
}


@pytest.fixture(scope="module")
def ci_input():
    """The generated image and boxes of parity/check_paper_augmentation.py --ci-input (keep the two in step)."""
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, size=(150, 200, 3)).astype(np.uint8)
    boxes = np.array([[10, 20, 70, 90], [100, 5, 190, 60], [40, 100, 58, 118], [150, 110, 162, 146]], np.float32)
    return image, boxes


@pytest.fixture
def our_statistics(make_cfg):
    def build(image, boxes):
        mapper = MutualGuideDatasetMapper(make_cfg(size=320), is_train=True)
        values = {key: [] for key in PAPER}
        values["interpolation"], values["fallback"] = [], []
        h, w = image.shape[:2]
        np.random.seed(0)
        for _ in range(N):
            aug_input, tfms = mapper.augment(image, boxes)
            values["fallback"].append(not len(aug_input.boxes))
            if values["fallback"][-1]:
                continue
            crop = [t for t in tfms.transforms if isinstance(t, CropTransform)]
            values["cropped"].append(bool(crop))
            ch, cw = (crop[0].h, crop[0].w) if crop else (h, w)
            if crop:
                values["crop area"].append(cw * ch / (w * h))
                values["crop aspect (log)"].append(math.log((cw / w) / (ch / h)))
            expand = [t for t in tfms.transforms if isinstance(t, ExpandTransform)]
            values["expanded"].append(bool(expand))
            if expand:
                e = expand[0]
                eh, ew = ch + e.y0 + e.y1, cw + e.x0 + e.x1
                values["canvas scale"].append(math.sqrt(eh * ew / (ch * cw)))
                values["canvas aspect (log)"].append(math.log((ew / cw) / (eh / ch)))
            wh = aug_input.boxes[:, 2:] - aug_input.boxes[:, :2]
            values["boxes kept"].append(len(wh) / len(boxes))
            values["box side (px), mean of a sample"].append(np.sqrt(wh[:, 0] * wh[:, 1]).mean())
            values["box aspect (log), mean of a sample"].append(np.log(wh[:, 0] / wh[:, 1]).mean())
            values["a box side < 8 px"].append(bool((wh.min(axis=1) < 8).any()))
            values["interpolation"].append(tfms.transforms[-1].interp)
        distortion = PhotometricDistortion()
        hsv_in = cv2_hsv(image)
        for _ in range(N):
            out = distortion.get_transform(image).apply_image(image)
            values["colour: mean B shift"].append(out[..., 0].mean() - image[..., 0].mean())
            hsv = cv2_hsv(out)
            values["colour: mean saturation shift"].append(hsv[..., 1].mean() - hsv_in[..., 1].mean())
            values["colour: hue changed"].append(np.abs(hsv[..., 0] - hsv_in[..., 0]).mean() > 4)
        return values

    return build


def cv2_hsv(image):
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float64)


@pytest.mark.slow
def test_distributions_match_the_papers(ci_input, our_statistics):
    values = our_statistics(*ci_input)
    failures = []
    for key, (mean, std, n) in PAPER.items():
        ours = np.asarray(values[key], np.float64)
        se = math.sqrt(std**2 / n + ours.var() / len(ours))
        if abs(ours.mean() - mean) > 4 * se:
            failures.append(f"{key}: ours {ours.mean():.4f}, the authors' {mean:.4f} (4 standard errors: {4 * se:.4f})")
    # the authors' code never fell back to the unaugmented image on this input in 20000 samples
    assert not any(values["fallback"]), f"fall-back in {sum(values['fallback'])} of {N} samples"
    # the authors' code draws one of five interpolations uniformly
    counts = np.bincount(np.unique(values["interpolation"], return_inverse=True)[1])
    assert len(counts) == 5
    se = math.sqrt(0.2 * 0.8 / N)
    failures += [f"interpolation frequency {c / N:.3f}" for c in counts if abs(c / N - 0.2) > 4 * se]
    assert not failures, "\n".join(failures)
