"""Plots of the shortcut diagnostics and of per-arm comparisons (matplotlib, Agg canvas, no pyplot).

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas, so no GUI backend is touched and
no global pyplot state is created; every function returns the Figure and :func:`save_figure` writes a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from causalneg.contracts import PRIMARY_METRIC
from causalneg.diagnostics.shortcut import ShortcutReport
from causalneg.records import NegativeSource

SOURCE_COLOURS = {
    NegativeSource.MINED: "tab:blue",
    NegativeSource.GENERATED: "tab:orange",
    NegativeSource.NAIVE_GENERATED: "tab:red",
    NegativeSource.RANDOM: "tab:gray",
    NegativeSource.IN_BATCH: "tab:green",
}


def _legend(ax: Axes) -> None:
    """A legend only when something is labelled (a mined-only panel has nothing to tell apart)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def new_figure(width: float, height: float) -> Figure:
    """A Figure attached to an Agg canvas (renders to PNG without any display)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` (parent folders created) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def _source_panel(ax: Axes, values: np.ndarray, source: np.ndarray, xlabel: str, title: str) -> None:
    """Overlaid density histograms of ``values`` [N], one per source present, on shared bin edges."""
    edges = (np.histogram_bin_edges(values, bins=40) if values.size else np.linspace(-1, 1, 41)).tolist()
    for code in sorted(np.unique(source).tolist()):
        member = NegativeSource(code)
        vals = values[source == code]
        colour = SOURCE_COLOURS.get(member, "black")
        label = f"{member.name.lower()} (n={vals.size})"
        ax.hist(vals, bins=edges, density=True, alpha=0.35, color=colour, label=label)
        ax.hist(vals, bins=edges, density=True, histtype="step", color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    _legend(ax)


def source_histograms(report: ShortcutReport, title: str = "") -> Figure:
    """Two panels: per-source histograms of cos(q, negative) and of the margin cos(q, p) − cos(q, negative).

    Args:
        report: the diagnostics whose ``similarity``, ``margin`` and ``source`` arrays are drawn.
        title: appended to the figure title (e.g. "start of training, step 0").
    """
    fig = new_figure(11, 4)
    left, right = fig.subplots(1, 2)
    _source_panel(
        left, report.similarity, report.source, "cos(query, negative)", "Similarity by negative source"
    )
    _source_panel(
        right, report.margin, report.source, "cos(query, positive) − cos(query, negative)", "Margin by source"
    )
    right.axvline(0.0, color="black", linewidth=0.8, linestyle=":")
    mi = report.metrics.get("mi_knn")
    suffix = f"   I(Z;S) = {mi:.4f} nats (k-NN)" if mi is not None else ""
    fig.suptitle(f"Per-source score distributions{(' — ' + title) if title else ''}{suffix}")
    return fig


def mi_curve(history: Sequence[tuple[int, dict[str, float]]]) -> Figure:
    """I(Z; S) over training steps, k-NN and binned estimates, against their permutation 95th percentiles.

    Args:
        history: ``(global_step, metrics)`` pairs as recorded by the callback (``metrics`` keys as in
            :func:`causalneg.diagnostics.shortcut.shortcut_diagnostics`); steps without MI are skipped.
    """
    rows = [(step, m) for step, m in history if "mi_knn" in m]
    fig = new_figure(7, 4)
    ax = fig.subplots()
    if rows:
        steps = np.array([step for step, _ in rows])
        for key, colour, name in (
            ("mi_knn", "tab:blue", "k-NN (Ross)"),
            ("mi_binned", "tab:orange", "binned (MM)"),
        ):
            ax.plot(steps, [m[key] for _, m in rows], marker="o", color=colour, label=f"I(Z;S) {name}")
            p95 = np.array([m[f"{key}_perm_p95"] for _, m in rows])
            ax.fill_between(
                steps, 0.0, p95, color=colour, alpha=0.15, label=f"permutation band ≤ p95, {name}"
            )
    else:
        ax.text(
            0.5, 0.5, "no step had both mined and generated negatives", ha="center", transform=ax.transAxes
        )
    ax.set_xlabel("global step")
    ax.set_ylabel("I(source; similarity) [nats]")
    ax.set_title("Source shortcut: mutual information between source and similarity")
    ax.set_ylim(bottom=0.0)
    _legend(ax)
    return fig


def _errors(rows: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Asymmetric error bars [2, A] from the bootstrap interval, or ±sd over seeds where there is none."""
    mean = rows["mean"].to_numpy(dtype=float)
    low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
        return np.vstack([mean - low, high - mean]), "95% bootstrap interval over queries"
    sd = np.nan_to_num(rows["sd"].to_numpy(dtype=float))
    return np.vstack([sd, sd]), "± sd over seeds"


def _bar_panel(ax: Axes, summary: pd.DataFrame, metric: str, arms: Sequence[str], ylabel: str) -> None:
    rows = summary[summary["metric"] == metric].set_index("arm").reindex(list(arms))
    x = np.arange(len(arms))
    if rows["mean"].notna().any():
        err, what = _errors(rows.fillna({"mean": 0.0}))
        ax.bar(x, rows["mean"].fillna(0.0), yerr=err, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_title(f"{metric} per arm\n(bars: mean over seeds; error bars: {what})", fontsize="medium")
        for i in np.flatnonzero(rows["mean"].isna().to_numpy()):
            # e.g. MI for an arm without generated negatives: say so instead of drawing an empty bar
            ax.text(x[i], 0.0, "not measured", ha="center", va="bottom", rotation=90, fontsize="small")
    else:
        ax.set_title(f"{metric}: not logged by any run", fontsize="medium")
    ax.set_xticks(x, list(arms), rotation=20, ha="right")
    ax.set_ylabel(ylabel)


def metric_by_arm(
    summary: pd.DataFrame, metric: str = f"test/{PRIMARY_METRIC}", arms: Sequence[str] | None = None
) -> Figure:
    """Bar chart of one metric per arm with its 95% interval.

    Args:
        summary: long table with columns ``arm, metric, mean, sd, ci_low, ci_high`` (as built by
            :func:`causalneg.tracking.compare.summarize`).
        metric: metric name, e.g. ``"test/ndcg@10"``.
        arms: bar order; default the arms of ``summary`` in order of appearance.
    """
    order = list(arms) if arms is not None else list(dict.fromkeys(summary["arm"]))
    fig = new_figure(max(6.5, 1.2 * len(order) + 2), 4.5)
    _bar_panel(fig.subplots(), summary, metric, order, metric)
    return fig


def shortcut_by_arm(summary: pd.DataFrame, arms: Sequence[str] | None = None) -> Figure:
    """Two panels per arm: final I(Z; S) (k-NN, with its permutation p95) and the query-blind probe AUC."""
    order = list(arms) if arms is not None else list(dict.fromkeys(summary["arm"]))
    fig = new_figure(max(12.0, 2.0 * len(order) + 3), 4.8)
    left, right = fig.subplots(1, 2)
    _bar_panel(left, summary, "diag/mi_knn", order, "I(source; similarity) [nats]")
    p95 = summary[summary["metric"] == "diag/mi_perm_p95"].set_index("arm").reindex(order)["mean"]
    if p95.notna().any():
        left.scatter(np.arange(len(order)), p95, marker="_", s=400, color="black", label="permutation p95")
        _legend(left)
    _bar_panel(right, summary, "diag/probe_auc_blind", order, "query-blind probe ROC-AUC")
    right.axhline(0.5, color="black", linestyle=":", linewidth=0.8)
    right.set_ylim(0.0, 1.0)
    fig.suptitle("Source shortcut per arm: mutual information and source probe (final diagnostics)")
    return fig
