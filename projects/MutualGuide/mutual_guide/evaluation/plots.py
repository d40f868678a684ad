"""
The evaluation report's two pictures (evaluation_report.py), drawn with matplotlib's Agg canvas on a Figure of
their own: no pyplot, so no global backend or figure state is touched (the Visualizer and the trainer share
the process). Classes have the colours of the drawings (drawing.PALETTE).
"""
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mutual_guide.utils.atomic_io import write_atomically
from mutual_guide.utils.drawing import PALETTE

__all__ = ["plot_alignment", "plot_confusion_matrix", "plot_pr_curves"]

_MAX_CURVES_IN_LEGEND = 20  # more classes: only the 5 best and 5 worst are named
_MAX_CELLS_WITH_COUNTS = 30  # a larger matrix has no room to write its counts


def _save(figure, path):
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    write_atomically(path, buffer.getvalue())


def plot_pr_curves(path, dataset_name, results):
    """Precision against recall at IoU 0.5, one curve per class with ground truth, and their mean."""
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    ax = figure.add_subplot()
    ap50 = np.asarray(results.ap["AP50"], dtype=np.float64)
    recall = np.linspace(0.0, 1.0, results.precision.shape[1])  # the report's recall grid, evenly spaced from 0 to 1
    defined = [k for k in range(len(results.names)) if np.isfinite(results.precision[k]).all()]
    named = defined
    if len(defined) > _MAX_CURVES_IN_LEGEND:  # the others thin and unnamed, under the named ones
        ranked = sorted(defined, key=lambda k: -ap50[k])
        named = ranked[:5] + ranked[-5:]
        for k in ranked[5:-5]:
            ax.plot(recall, results.precision[k], color=PALETTE[k % len(PALETTE)], linewidth=0.8, alpha=0.35)
    for k in named:
        ax.plot(recall, results.precision[k], color=PALETTE[k % len(PALETTE)], linewidth=1.6,
                label=f"{results.names[k]} (AP50 {ap50[k]:.1f})")
    if defined:
        mean_curve = np.mean(results.precision[defined], axis=0)
        mean_ap50 = results.mean("AP50")
        about = f"AP50 {mean_ap50:.1f}" if np.isfinite(mean_ap50) else "the metric's AP50 is NaN"
        ax.plot(recall, mean_curve, color="black", linewidth=2.8, linestyle="--",
                label=f"mean of {len(defined)} classes ({about})")
    missing = len(results.names) - len(defined)
    title = "classes" if len(named) == len(defined) else f"5 best and 5 worst of {len(defined)} classes"
    if missing:
        title += f"\n({missing} without ground truth, not drawn)"
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Recall", fontsize=13)
    ax.set_ylabel("Precision", fontsize=13)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)
    ax.set_title(f"Precision-recall at IoU 0.5 on {dataset_name}\n{results.metric}", fontsize=14)
    if defined:
        ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=11, title_fontsize=11)
    else:
        ax.text(0.5, 0.5, "no class has ground truth", ha="center", va="center", fontsize=14)
    _save(figure, path)


def plot_confusion_matrix(path, dataset_name, labels, counts, iou_threshold, score_threshold):
    """
    The counts of confusion_matrix (rows: ground truth, columns: prediction, background last), coloured by
    their share of the row and written in the cells.
    """
    counts = np.asarray(counts)
    n = len(labels)
    many = n > _MAX_CELLS_WITH_COUNTS
    side = 0.3 * n + 4.0 if many else max(6.5, 0.5 * n + 3.5)  # inches; 81 COCO labels need 0.3 each
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = figure.add_subplot()
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    shown = np.ma.masked_array(share, mask=np.zeros_like(share, dtype=bool))
    shown.mask[-1, -1] = True  # background detected as background is not counted
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0)
    colourbar = figure.colorbar(image, ax=ax, shrink=0.4 if many else 0.8)
    colourbar.set_label("share of its row", fontsize=16 if many else 11)
    tick_size = 12 if n <= 12 else 9 if not many else 8
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size)
    ax.set_yticks(range(n), labels, fontsize=tick_size)
    ax.set_xlabel("Predicted class", fontsize=18 if many else 13)
    ax.set_ylabel("Ground-truth class", fontsize=18 if many else 13)
    if not many:
        for row in range(n):
            for col in range(n):
                if row == col == n - 1:
                    continue
                ax.text(col, row, str(int(counts[row, col])), ha="center", va="center",
                        fontsize=tick_size, color="white" if share[row, col] > 0.5 else "black")
    ax.set_title(
        f"Confusion matrix on {dataset_name}: IoU \u2265 {iou_threshold:g}, score \u2265 {score_threshold:g}\n"
        "background row: detections of no object; background column: objects not detected",
        fontsize=20 if many else 12,
    )
    _save(figure, path)


def plot_alignment(path, panels):
    """
    Score against IoU of the detections matched at IoU 0.5, one panel per run side by side (alignment.py,
    tools/compare_runs.py): a hexbin of the detections (log counts) and the mean score per IoU bin of 0.05.
    `panels`: (title, scores, ious, figures) with figures holding "spearman", "matched" and "worse_placed".
    The score axis ends a little above the highest matched score of all panels (an early model scores low).
    """
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(7.0 * len(panels), 6.0), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    bins = np.linspace(0.5, 1.0, 11)
    top = max([float(np.max(p[1])) for p in panels if len(p[1])] or [1.0])
    top = min(1.0, max(0.05, np.ceil(top * 11) / 10))  # about 10% above the highest score, on a 0.1 step
    for ax, (title, scores, ious, figures) in zip(axes, panels):
        scores, ious = np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)
        if len(scores):
            cells = ax.hexbin(ious, scores, gridsize=(25, 18), extent=(0.5, 1.0, 0.0, top), bins="log",
                              cmap="viridis", mincnt=1, linewidths=0.2)  # a single detection stays visible
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            colourbar = figure.colorbar(cells, ax=ax, shrink=0.85, format=plain)
            colourbar.ax.yaxis.set_minor_formatter(plain)
            colourbar.set_label("matched detections per cell", fontsize=11)
            which = np.clip(np.digitize(ious, bins) - 1, 0, len(bins) - 2)
            centres, means = [], []
            for b in range(len(bins) - 1):
                if (which == b).any():
                    centres.append((bins[b] + bins[b + 1]) / 2)
                    means.append(scores[which == b].mean())
            ax.plot(centres, means, color="#d62728", linewidth=2.5, marker="o", label="mean score per IoU bin")
            ax.legend(loc="upper left", fontsize=11)
        else:
            ax.text(0.75, top / 2, "no matched detection", ha="center", va="center", fontsize=14)
        worse = figures.get("worse_placed")
        worse = f"{100 * worse:.1f}%" if worse is not None and np.isfinite(worse) else "not recorded"
        rho = figures.get("spearman")
        rho = f"{rho:.3f}" if rho is not None and np.isfinite(rho) else "-"
        ax.set_title(f"{title}\nSpearman {rho} over {figures.get('matched', len(scores))} matched detections\n"
                     f"worse placed than a box NMS removed: {worse}", fontsize=12)
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.0, top)
        ax.set_xlabel("IoU with the matched object", fontsize=13)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=11)
    axes[0].set_ylabel("Score", fontsize=13)
    _save(figure, path)
