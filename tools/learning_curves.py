#!/usr/bin/env python
"""
Learning curves of settings, each one or more runs (random seeds), from the evaluations their training left in
metrics.json (TEST.EVAL_PERIOD > 0): a table of the metric at every evaluated iteration (mean and min-max over the
runs of a setting) and a plot, one line per setting with its seeds' range shaded. Nothing is retrained.

    python tools/learning_curves.py --setting mg=out/mg_s0,out/mg_s1,out/mg_s2 --setting iou=out/iou_s0,... \
        [--metric bbox/AP50] [--output curves.png] [--overwrite]

The settings are given as tools/compare_runs.py takes them, so that one command line serves both.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from tabulate import tabulate  # noqa: E402

from mutual_guide.utils.atomic_io import refuse_to_replace, write_atomically  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_runs import parse_setting  # noqa: E402  (the same --setting NAME=RUN[,RUN...])


def read_curve(run, metric):
    """{iteration: value} of `metric` in run/metrics.json (the last value logged at an iteration wins)."""
    path = os.path.join(run, "metrics.json")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file (is {run!r} a training OUTPUT_DIR?)")
    max_iter = float("inf")
    config = os.path.join(run, "config.yaml")
    if os.path.isfile(config):
        with open(config) as f:
            max_iter = int(yaml.safe_load(f).get("SOLVER", {}).get("MAX_ITER", max_iter))
    curve = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}, line {number}: not JSON ({e})")
            if metric in entry and "iteration" in entry:
                # iterations trained when it was evaluated (the final evaluation is logged one past the last)
                curve[min(int(entry["iteration"]) + 1, max_iter)] = float(entry[metric])
    if not curve:
        raise SystemExit(f"{path}: no {metric!r} logged (was TEST.EVAL_PERIOD 0?)")
    return curve


def setting_curves(folders, metric):
    """(iterations evaluated in every run, [runs, iterations] array)."""
    curves = [read_curve(folder, metric) for folder in folders]
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if not common:
        raise SystemExit(f"{', '.join(folders)}: no iteration evaluated in every run")
    return common, np.array([[c[i] for i in common] for c in curves])


def plot(path, metric, settings):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import io

    figure = Figure(figsize=(7.5, 5.0), layout="constrained")
    axes = figure.subplots()
    for name, (iterations, values) in settings.items():
        mean = values.mean(axis=0)
        line, = axes.plot(iterations, mean, marker="o", label=f"{name} ({len(values)} runs)")
        if len(values) > 1:
            axes.fill_between(iterations, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    axes.set_xlabel("training iteration")
    axes.set_ylabel(f"{metric} (mean; shaded: min to max over runs)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    write_atomically(path, buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", action="append", type=parse_setting, required=True,
                        help="NAME=RUN[,RUN...]: the OUTPUT_DIRs of one setting's runs")
    parser.add_argument("--metric", default="bbox/AP50", help="a key of metrics.json, e.g. bbox/AP")
    parser.add_argument("--output", help="the plot (PNG); none when not given")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    if args.output:
        refuse_to_replace([args.output], flag="--overwrite", allowed=args.overwrite)
    settings = {name: setting_curves(folders, args.metric) for name, folders in args.setting}
    rows = []
    for name, (iterations, values) in settings.items():
        for k, iteration in enumerate(iterations):
            column = values[:, k]
            rows.append([name, iteration, f"{column.mean():.2f}", f"{column.min():.2f} - {column.max():.2f}",
                         " ".join(f"{v:.2f}" for v in column)])
    print(tabulate(rows, headers=["setting", "iteration", f"{args.metric} mean", "min - max", "runs"],
                   tablefmt="pipe", disable_numparse=True))
    if args.output:
        plot(args.output, args.metric, settings)
        print(f"plot: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
