"""
Comparing settings (each one or more runs: random seeds) from their evaluations' records, with the noise of the
test set and of the seeds; the engine of tools/compare_runs.py. docs/evaluation.md ("Comparing runs") states
the method:

- a setting's figure is the mean over its runs of the figure on the full test set;
- its interval: the percentile interval of that mean over `resamples` bootstrap resamples of the test images
  (drawn with replacement, the same draw for every run of the setting; a fixed random generator);
- its seed spread: mean, standard deviation, min and max over the runs;
- a difference between two settings: paired when both saw the same images (each resample applied to both),
  otherwise two independent resamples. Its bootstrap interval's half-widths are combined in quadrature with the
  seed noise t * sqrt(s_a^2 / n_a + s_b^2 / n_b) (Student's t, Welch's degrees of freedom; none with one run
  per setting): "larger than the noise" when the combined interval leaves out 0, else "within the noise".
"""
import math
import os
from dataclasses import dataclass

import numpy as np

from mutual_guide.evaluation.alignment import alignment_figures, detection_alignment
from mutual_guide.evaluation.matching import EvaluationSet, match_detections
from mutual_guide.evaluation.records import RECORDS_FILE, read_records

__all__ = ["FIGURES", "Run", "compare_settings", "find_records", "load_run", "resample_counts", "student_t_quantile"]

# the figures compared, in print order; AP* in percent, the others as alignment.py defines them
FIGURES = ("AP", "AP50", "AP75", "AP50_minus_AP75", "spearman", "mean_iou", "worse_placed", "gap_mean", "iou_lost")
LARGER, WITHIN = "larger than the noise", "within the noise"


@dataclass
class Run:
    """One run's evaluation, matched once, ready to be recomputed on resampled images."""

    folder: str
    records: dict
    data: EvaluationSet
    matching: object
    alignment: object

    @property
    def image_ids(self):
        return [str(i) for i in self.data.image_ids]

    def figures(self, image_weights=None):
        return alignment_figures(self.data, self.matching, self.alignment, image_weights, kendall=False,
                                 removed_recorded=bool(self.records.get("removed_recorded", False)))


def find_records(folder, dataset=None):
    """The per_image.json.gz of a run folder (OUTPUT_DIR: eval/<dataset>/), of an eval/<dataset>/ folder, or
    the file itself; `dataset` chooses among several. FileNotFoundError / ValueError naming what is there."""
    if os.path.isfile(folder):
        return folder
    if os.path.isfile(os.path.join(folder, RECORDS_FILE)):
        return os.path.join(folder, RECORDS_FILE)
    eval_dir = os.path.join(folder, "eval")
    found = sorted(d for d in os.listdir(eval_dir) if os.path.isfile(os.path.join(eval_dir, d, RECORDS_FILE))) \
        if os.path.isdir(eval_dir) else []
    if dataset is not None:
        if dataset not in found:
            raise FileNotFoundError(f"{folder}: no eval/{dataset}/{RECORDS_FILE} (datasets with records: "
                                    f"{', '.join(found) or 'none'})")
        return os.path.join(eval_dir, dataset, RECORDS_FILE)
    if len(found) != 1:
        raise ValueError(f"{folder}: {'no' if not found else 'several'} eval/<dataset>/{RECORDS_FILE} "
                         f"({', '.join(found) or 'run an evaluation first'}); choose one with --dataset")
    return os.path.join(eval_dir, found[0], RECORDS_FILE)


def run_from_records(records, folder=""):
    data = EvaluationSet.from_records(records)
    matching = match_detections(data, "all")
    return Run(folder, records, data, matching, detection_alignment(data, matching, records))


def load_run(folder, dataset=None):
    return run_from_records(read_records(find_records(folder, dataset)), folder)


def resample_counts(num_images, resamples, rng):
    """[resamples, num_images] how many times each image is drawn, num_images draws with replacement each."""
    draws = rng.integers(0, num_images, size=(resamples, num_images))
    return np.stack([np.bincount(row, minlength=num_images) for row in draws]).astype(np.float64)


def student_t_quantile(p, df):
    """The p-quantile of Student's t with `df` degrees of freedom (numerical: its CDF integrated, bisected)."""
    if not np.isfinite(df):
        return float(_normal_quantile(p))
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x):  # 0.5 + integral of the density from 0 to x (Simpson's rule, fine grid)
        t = np.linspace(0.0, abs(x), 2001)
        density = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
        h = t[1] - t[0]
        area = h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
        return 0.5 + math.copysign(area, x)

    lo, hi = -1e3, 1e3
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _normal_quantile(p):
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def _setting_figures(runs, weights_per_run):
    """{figure: [B]} the mean over the runs of each figure, recomputed with each run's weights [B, I]."""
    values = {f: np.zeros(len(weights_per_run[0])) for f in FIGURES}
    for run, weights in zip(runs, weights_per_run):
        for b, w in enumerate(weights):
            figures = run.figures(w)
            for f in FIGURES:
                values[f][b] += figures[f] / len(runs)
    return values


def _weights_for(run, counts, image_ids):
    """counts over `image_ids` ([B, I]) as weights over the run's own image order."""
    position = {image_id: n for n, image_id in enumerate(image_ids)}
    return counts[:, [position[i] for i in run.image_ids]]


def _seed_spread(values):
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"mean": None, "std": None, "min": None, "max": None, "values": values.tolist()}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "min": float(finite.min()), "max": float(finite.max()), "values": values.tolist()}


def _interval(samples, confidence):
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return [None, None]
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))]


def compare_settings(settings, resamples=1000, seed=0, confidence=0.95):
    """
    `settings`: {name: [Run, ...]}. Returns {"settings": {name: {"runs", "figures": {figure: {"value",
    "interval", "seeds"}}}}, "differences": [{"a", "b", "paired", "figures": {figure: {"difference",
    "interval", "bootstrap_interval", "seed_term", "verdict"}}}], "method": {...}}.
    """
    rng = np.random.default_rng(seed)
    image_sets = {}
    for name, runs in settings.items():
        if not runs:
            raise ValueError(f"setting {name!r} has no run")
        ids = runs[0].image_ids
        for run in runs[1:]:
            if sorted(run.image_ids) != sorted(ids):
                raise ValueError(f"setting {name!r}: {run.folder} was evaluated on other images than "
                                 f"{runs[0].folder}; the runs of a setting must share their test set")
        image_sets[name] = ids
    shared = len({tuple(sorted(ids)) for ids in image_sets.values()}) == 1
    samples, result = {}, {"settings": {}, "differences": []}
    common = next(iter(image_sets.values()))
    shared_counts = resample_counts(len(common), resamples, rng) if shared else None
    for name, runs in settings.items():
        ids = common if shared else image_sets[name]
        counts = shared_counts if shared else resample_counts(len(ids), resamples, rng)
        samples[name] = _setting_figures(runs, [_weights_for(run, counts, ids) for run in runs])
        points = [run.figures() for run in runs]
        figures = {}
        for f in FIGURES:
            per_seed = [p[f] for p in points]
            spread = _seed_spread(per_seed)
            figures[f] = {"value": spread["mean"], "interval": _interval(samples[name][f], confidence),
                          "seeds": spread}
        result["settings"][name] = {"runs": [run.folder for run in runs], "figures": figures,
                                    "num_images": len(ids), "dataset": runs[0].records.get("dataset")}
    names = list(settings)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            result["differences"].append(_difference(a, b, settings, result, samples, shared, confidence))
    result["method"] = {"resamples": resamples, "seed": seed, "confidence": confidence, "paired": shared,
                        "interval": "percentile bootstrap over test images; differences: bootstrap half-widths and "
                                    "Student-t seed noise combined in quadrature"}
    return result


def _difference(a, b, settings, result, samples, paired, confidence):
    out = {"a": a, "b": b, "paired": paired, "figures": {}}
    for f in FIGURES:
        fa, fb = result["settings"][a]["figures"][f], result["settings"][b]["figures"][f]
        if fa["value"] is None or fb["value"] is None:
            out["figures"][f] = {"difference": None, "interval": [None, None], "bootstrap_interval": [None, None],
                                 "seed_term": None, "verdict": "undefined"}
            continue
        d = fa["value"] - fb["value"]
        lo, hi = _interval(samples[a][f] - samples[b][f], confidence)
        if lo is None:
            lo = hi = d
        seed_term, note = _seed_term(fa["seeds"], fb["seeds"], len(settings[a]), len(settings[b]), confidence)
        lower = d - math.hypot(d - lo, seed_term)
        upper = d + math.hypot(hi - d, seed_term)
        verdict = LARGER if (lower > 0 or upper < 0) else WITHIN
        out["figures"][f] = {"difference": d, "interval": [lower, upper], "bootstrap_interval": [lo, hi],
                             "seed_term": seed_term, "verdict": verdict, **({"note": note} if note else {})}
    return out


def _seed_term(sa, sb, na, nb, confidence):
    """t * sqrt(s_a^2/n_a + s_b^2/n_b) with Welch's degrees of freedom; 0 (and a note) without two runs a side."""
    if na < 2 or nb < 2 or sa["std"] is None or sb["std"] is None:
        return 0.0, "one run in a setting: seed noise not measured, the interval is the test set's alone"
    va, vb = sa["std"] ** 2 / na, sb["std"] ** 2 / nb
    if va + vb == 0:
        return 0.0, None
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return student_t_quantile(1 - (1 - confidence) / 2, df) * math.sqrt(va + vb), None
