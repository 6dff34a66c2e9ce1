"""Build, write and publish the comparison of an experiment's arms (``stage=compare`` and the notebook)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from causalneg import contracts
from causalneg.artifacts import atomic_write_text
from causalneg.diagnostics.plots import metric_by_arm, save_figure, shortcut_by_arm
from causalneg.errors import ConfigError
from causalneg.tracking.compare import (
    RunRecord,
    paired_tests,
    per_query_frame,
    per_query_key,
    runs_frame,
    summarize,
)
from causalneg.tracking.mlflow_io import load_experiment_runs, log_summary_run
from causalneg.tracking.render import arm_order, render_markdown

DEFAULT_METRICS = (
    *(f"test/{name}" for name in contracts.PER_QUERY_METRICS),
    "diag/mi_knn",
    "diag/mi_binned",
    "diag/mi_perm_p95",
    "diag/probe_auc_blind",
    "diag/probe_auc_sim",
    "diag/gen_mass",
    "diag/gen_mass_expected",
    "diag/h_gen_norm",
)
PRIMARY_METRIC = f"test/{contracts.PRIMARY_METRIC}"


@dataclass(frozen=True)
class CompareOptions:
    """What to compare: the experiment, the baseline arm, the metrics, and the bootstrap settings."""

    experiment: str
    baseline_arm: str = "mined_only"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    n_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_bootstrap < 1:
            raise ConfigError(f"compare.n_bootstrap must be >= 1, got {self.n_bootstrap}")
        if not self.metrics:
            raise ConfigError("compare.metrics must name at least one metric")


@dataclass
class Comparison:
    """All tables of one comparison; ``markdown`` is the printed report."""

    runs: pd.DataFrame
    per_query: pd.DataFrame
    summary: pd.DataFrame
    tests: pd.DataFrame
    markdown: str
    arms: list[str]
    notes: list[str] = field(default_factory=list)


def build_comparison(
    records: Sequence[RunRecord], options: CompareOptions, notes: Sequence[str] = ()
) -> Comparison:
    """Aggregate runs into the summary table, the paired tests and the markdown report (no I/O)."""
    if not records:
        raise ConfigError(f"compare.experiment: no finished runs with an 'arm' tag in {options.experiment!r}")
    runs = runs_frame(records)
    per_query = per_query_frame(records, options.metrics)
    summary = summarize(runs, per_query, options.metrics, options.n_bootstrap, options.seed)
    query_metrics = [m for m in options.metrics if per_query_key(m) is not None]
    tests = paired_tests(per_query, query_metrics, options.baseline_arm, options.n_bootstrap, options.seed)
    all_notes = list(notes)
    missing = [m for m in options.metrics if m not in set(summary["metric"])]
    if missing:
        all_notes.append(f"not logged by any run: {', '.join(missing)}")
    if options.baseline_arm not in set(runs["arm"]):
        all_notes.append(f"baseline arm {options.baseline_arm!r} has no runs; no paired tests")
    markdown = render_markdown(summary, tests, options.baseline_arm, options.experiment)
    if all_notes:
        markdown += "\nNotes:\n" + "".join(f"- {note}\n" for note in all_notes)
    arms = arm_order(runs["arm"], options.baseline_arm)
    return Comparison(runs, per_query, summary, tests, markdown, arms, all_notes)


def write_comparison(comparison: Comparison, out_dir: str | Path) -> list[Path]:
    """Write ``summary.md``, ``summary.csv``, ``paired_tests.csv``, ``runs.csv`` and the two PNG plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / name for name in ("summary.md", "summary.csv", "paired_tests.csv", "runs.csv")]
    atomic_write_text(files[0], comparison.markdown)
    atomic_write_text(files[1], comparison.summary.to_csv(index=False))
    atomic_write_text(files[2], comparison.tests.to_csv(index=False))
    atomic_write_text(files[3], comparison.runs.to_csv(index=False))
    figures = {
        "ndcg_by_arm.png": metric_by_arm(comparison.summary, PRIMARY_METRIC, comparison.arms),
        "shortcut_by_arm.png": shortcut_by_arm(comparison.summary, comparison.arms),
    }
    files += [save_figure(fig, out / name) for name, fig in figures.items()]
    return files


def compare_experiment(
    tracking_uri: str, options: CompareOptions, out_dir: str | Path, log_summary: bool = True
) -> dict[str, Any]:
    """Load an experiment's runs, compare the arms, write the files and (optionally) log a summary run.

    Returns ``markdown``, ``output_dir``, ``files``, ``summary_run_id`` (None if not logged), ``n_runs``,
    ``arms`` and ``notes``.
    """
    records, notes = load_experiment_runs(tracking_uri, options.experiment)
    comparison = build_comparison(records, options, notes)
    files = write_comparison(comparison, out_dir)
    run_id = None
    if log_summary:
        tags = {"baseline_arm": options.baseline_arm, "compared_runs": str(len(records))}
        run_id = log_summary_run(tracking_uri, options.experiment, out_dir, tags)
    return {
        "markdown": comparison.markdown,
        "output_dir": str(out_dir),
        "files": [str(f) for f in files],
        "summary_run_id": run_id,
        "n_runs": len(records),
        "arms": comparison.arms,
        "notes": comparison.notes,
    }
