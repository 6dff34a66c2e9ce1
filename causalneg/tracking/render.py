"""Markdown rendering of the comparison tables built by :mod:`causalneg.tracking.compare`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd


def arm_order(arms: Iterable[str], baseline_arm: str | None = None) -> list[str]:
    """The baseline arm first (if present), then the others sorted by name."""
    unique = sorted(set(arms))
    if baseline_arm in unique:
        unique.remove(baseline_arm)
        unique.insert(0, baseline_arm)
    return unique


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _p_value(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def format_cell(row: pd.Series) -> str:
    """``mean ± sd [ci_low, ci_high]``, leaving out the parts that are NaN (one seed, no per-query values)."""
    text = _num(row["mean"])
    if math.isfinite(row["sd"]):
        text += f" ± {_num(row['sd'])}"
    if math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]):
        text += f" [{_num(row['ci_low'])}, {_num(row['ci_high'])}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(summary: pd.DataFrame, metrics: Sequence[str], arms: Sequence[str]) -> str:
    """One row per arm (with its number of runs), one column per metric, cells from :func:`format_cell`."""
    cells = summary.set_index(["arm", "metric"])
    rows = []
    for arm in arms:
        n_runs = summary.loc[summary["arm"] == arm, "n_runs"].max()
        row = [arm, _num(n_runs, 0)]
        row += [format_cell(cells.loc[(arm, m)]) if (arm, m) in cells.index else "–" for m in metrics]
        rows.append(row)
    return _table(["arm", "runs", *metrics], rows)


def paired_table(tests: pd.DataFrame, arms: Sequence[str]) -> str:
    """One row per (arm, metric): queries, mean difference with its 95% interval, Wilcoxon p-value."""
    rows = []
    for arm in arms:
        for _, t in tests[tests["arm"] == arm].iterrows():
            delta = f"{t['mean_diff']:+.4f} [{_num(t['ci_low'])}, {_num(t['ci_high'])}]"
            rows.append([arm, t["metric"], _num(t["n_queries"], 0), delta, _p_value(t["p_value"])])
    return _table(["arm", "metric", "queries", "Δ mean [95% CI]", "Wilcoxon p"], rows)


def render_markdown(
    summary: pd.DataFrame, tests: pd.DataFrame, baseline_arm: str, experiment: str = ""
) -> str:
    """The full comparison report: retrieval metrics, diagnostics, and paired tests against the baseline."""
    arms = arm_order(summary["arm"], baseline_arm)
    metrics = list(dict.fromkeys(summary["metric"]))
    with_ci = [m for m in metrics if summary.loc[summary["metric"] == m, "ci_low"].notna().any()]
    without_ci = [m for m in metrics if m not in with_ci]
    title = f"# Comparison of arms{f' in experiment `{experiment}`' if experiment else ''}"
    parts = [title]
    if with_ci:
        parts += [
            "## Retrieval: mean ± sd over seeds [95% bootstrap interval over queries]",
            metrics_table(summary, with_ci, arms),
        ]
    if without_ci:
        parts += ["## Final values: mean ± sd over seeds", metrics_table(summary, without_ci, arms)]
    if not tests.empty:
        parts += [
            f"## Paired per-query comparison with `{baseline_arm}` (paired bootstrap, Wilcoxon signed-rank)",
            paired_table(tests, arms),
        ]
    else:
        parts.append(
            f"No paired tests: they need per-query values of baseline arm `{baseline_arm}` and another arm."
        )
    return "\n\n".join(parts) + "\n"
