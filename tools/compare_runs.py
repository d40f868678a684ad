#!/usr/bin/env python
"""
Compare settings, each one or more runs (random seeds), from their evaluations' per-image records: AP, AP50,
AP75 and the alignment figures with a bootstrap interval over the test images and the spread over seeds, then
every difference between settings with its interval and a verdict. Nothing is retrained or re-evaluated.

    python tools/compare_runs.py --setting mg=out/mg_s0,out/mg_s1,out/mg_s2 --setting iou=out/iou_s0,out/iou_s1 \
        [--dataset NAME] [--resamples 1000] [--seed 0] [--confidence 0.95] [--output-dir DIR] [--overwrite]

A run is an OUTPUT_DIR (its eval/<dataset>/per_image.json.gz; --dataset when it has several), an eval/<dataset>/
folder, or the file. Writes DIR/comparison.json and DIR/comparison.png (score against IoU, one panel per
setting); the method is in docs/evaluation.md ("Comparing runs").
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from mutual_guide.evaluation.comparison import FIGURES, compare_settings, load_run  # noqa: E402
from mutual_guide.evaluation.plots import plot_alignment  # noqa: E402
from mutual_guide.utils.atomic_io import AtomicFile, refuse_to_replace  # noqa: E402

_PERCENT = {"worse_placed"}  # shares, printed in percent
_DIGITS = {"AP": 2, "AP50": 2, "AP75": 2, "AP50_minus_AP75": 2}


def parse_setting(text):
    name, sep, folders = text.partition("=")
    folders = [f for f in folders.split(",") if f]
    if not sep or not name or not folders:
        raise argparse.ArgumentTypeError(f"--setting {text!r}: expected NAME=RUN[,RUN...]")
    return name, folders


def _fmt(value, figure):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if figure in _PERCENT:
        return f"{100 * value:.1f}%"
    return f"{value:.{_DIGITS.get(figure, 3)}f}"


def _interval(pair, figure):
    return f"[{_fmt(pair[0], figure)}, {_fmt(pair[1], figure)}]"


def tables(result):
    """The printed comparison: one table per setting, one per difference."""
    lines = []
    confidence = int(round(result["method"]["confidence"] * 100))
    for name, setting in result["settings"].items():
        rows = []
        for f in FIGURES:
            x = setting["figures"][f]
            seeds = x["seeds"]
            rows.append([f, _fmt(x["value"], f), _interval(x["interval"], f), _fmt(seeds["std"], f),
                         f"{_fmt(seeds['min'], f)} .. {_fmt(seeds['max'], f)}"])
        lines.append(f"Setting {name}: {len(setting['runs'])} run(s), {setting['num_images']} test images of "
                     f"{setting['dataset']}")
        lines.append(tabulate(rows, headers=["figure", "value", f"{confidence}% bootstrap", "seed std",
                                             "seed min .. max"], tablefmt="pipe", disable_numparse=True))
        lines.append("")
    for diff in result["differences"]:
        rows = [[f, _fmt(x["difference"], f), _interval(x["interval"], f), _interval(x["bootstrap_interval"], f),
                 x["verdict"]] for f, x in diff["figures"].items()]
        kind = "paired: the same test images" if diff["paired"] else "unpaired: different test images"
        lines.append(f"{diff['a']} - {diff['b']} ({kind})")
        lines.append(tabulate(rows, headers=["figure", "difference", f"{confidence}% interval (with seeds)",
                                             "bootstrap only", "verdict"], tablefmt="pipe", disable_numparse=True))
        notes = {x.get("note") for x in diff["figures"].values() if x.get("note")}
        lines += [f"note: {n}" for n in sorted(notes)]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", action="append", type=parse_setting, required=True,
                        help="NAME=RUN[,RUN...]: a setting and its runs (seeds); give two or more")
    parser.add_argument("--dataset", help="the evaluated dataset, when a run folder holds several")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's random generator")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the intervals")
    parser.add_argument("--output-dir", default="output/compare", help="where comparison.json/.png go")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier comparison's files")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.setting]
    if len(args.setting) < 2 or len(set(names)) != len(names):
        parser.error(f"give two or more --setting with different names, got {names}")
    if args.resamples < 1 or not 0 < args.confidence < 1:
        parser.error("--resamples must be >= 1 and --confidence in (0, 1)")
    paths = [os.path.join(args.output_dir, n) for n in ("comparison.json", "comparison.png")]
    refuse_to_replace(paths, flag="--overwrite", allowed=args.overwrite)

    settings = {name: [load_run(folder, args.dataset) for folder in folders] for name, folders in args.setting}
    for runs in settings.values():
        for run in runs:
            _check_against_evaluator(run)
    result = compare_settings(settings, args.resamples, args.seed, args.confidence)
    print(tables(result))

    os.makedirs(args.output_dir, exist_ok=True)
    with AtomicFile(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    panels = []
    for name, runs in settings.items():
        scores = np.concatenate([run.data.det_score[run.alignment.matched] for run in runs])
        ious = np.concatenate([run.alignment.iou[run.alignment.matched] for run in runs])
        figures = {f: x["value"] for f, x in result["settings"][name]["figures"].items()}
        figures["matched"] = len(scores)
        panels.append((f"{name} ({len(runs)} run{'s' if len(runs) > 1 else ''})", scores, ious, figures))
    plot_alignment(paths[1], panels)
    print(f"[compare_runs] wrote {paths[0]} and {paths[1]}")
    return result


def _check_against_evaluator(run):
    """The records' AP must be the evaluator's (alignment.json beside them holds both): warn when not."""
    path = os.path.join(os.path.dirname(run.folder if run.folder.endswith(".gz") else run.folder), "alignment.json")
    for candidate in (path, os.path.join(run.folder, "eval", str(run.records.get("dataset")), "alignment.json"),
                      os.path.join(run.folder, "alignment.json")):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                evaluator = json.load(f).get("evaluator") or {}
            ours = run.figures()
            off = {k: (ours[k], v) for k, v in evaluator.items() if v is not None and abs(ours[k] - v) > 1e-6}
            if off:
                print(f"[compare_runs] warning: {run.folder}: AP from the records differs from the evaluator's: {off}")
            return


if __name__ == "__main__":
    main()
