"""Pure functions that compare training arms: aggregation over seeds, bootstrap intervals, paired tests.

Inputs are :class:`RunRecord` objects (what one finished MLflow run holds; :mod:`causalneg.tracking.mlflow_io`
reads them), so everything here runs on synthetic data without a tracking store.

Statistics, per arm and metric:
- ``mean`` and ``sd`` (ddof = 1) over the arm's runs (one per seed) of the run's final logged value;
- ``ci_low``/``ci_high``: percentile bootstrap 95% interval of the mean over *queries*, for metrics with
  per-query values (``test/<m>`` ↔ artifact key ``<m>``). A query's value is first averaged over the arm's
  seeds, so the interval reflects query sampling, the dominant source of uncertainty on a fixed test set.
Paired comparison of an arm against the baseline arm on the queries both have: mean difference with a
paired bootstrap 95% interval, and the two-sided Wilcoxon signed-rank test (zero differences dropped).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats

PER_QUERY_PREFIX = "test/"


@dataclass(frozen=True)
class RunRecord:
    """One finished training run: its arm and seed tags, final metrics, and per-query test values.

    ``per_query`` maps an artifact key (``"ndcg@10"``) to ``{query_id: value}``.
    """

    run_id: str
    arm: str
    seed: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)


def per_query_key(metric: str) -> str | None:
    """The per-query artifact key of a metric (``"test/ndcg@10"`` → ``"ndcg@10"``); None if it has none."""
    return metric[len(PER_QUERY_PREFIX) :] if metric.startswith(PER_QUERY_PREFIX) else None


def runs_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run: ``run_id, arm, seed`` and one column per logged metric (NaN where not logged)."""
    rows = [{"run_id": r.run_id, "arm": r.arm, "seed": r.seed, **r.metrics} for r in records]
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "arm", "seed"])


def per_query_frame(records: Iterable[RunRecord], metrics: Sequence[str]) -> pd.DataFrame:
    """Long table ``run_id, arm, seed, metric, query_id, value`` of the per-query values of ``metrics``."""
    rows = []
    for r in records:
        for metric in metrics:
            key = per_query_key(metric)
            for qid, value in (r.per_query.get(key, {}) if key else {}).items():
                rows.append((r.run_id, r.arm, r.seed, metric, str(qid), float(value)))
    return pd.DataFrame(rows, columns=["run_id", "arm", "seed", "metric", "query_id", "value"])


def pool_queries(per_query: pd.DataFrame, metric: str) -> pd.DataFrame:
    """[queries × arms] table of a metric: a query's value averaged over the arm's seeds (NaN if absent)."""
    rows = per_query[per_query["metric"] == metric]
    return rows.pivot_table(index="query_id", columns="arm", values="value", aggfunc="mean")


def _bootstrap_means(values: NDArray[np.float64], n_bootstrap: int, seed: int) -> NDArray[np.float64]:
    """Means of ``n_bootstrap`` resamples (with replacement) of ``values`` [n], in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty(n_bootstrap, dtype=np.float64)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_bootstrap, chunk):
        stop = min(n_bootstrap, start + chunk)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[float] | NDArray[np.float64], n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped); (nan, nan) if empty."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    means = _bootstrap_means(v, n_bootstrap, seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_test(
    candidate: Sequence[float] | NDArray[np.float64],
    baseline: Sequence[float] | NDArray[np.float64],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired comparison of per-query values (same queries, same order; pairs with a NaN dropped).

    Returns ``n_queries``, ``mean_diff`` (candidate − baseline), its paired-bootstrap 95% interval
    ``ci_low``/``ci_high``, and the Wilcoxon signed-rank ``wilcoxon_stat`` and two-sided ``p_value``
    (p = 1 when every difference is zero; NaN when there are no pairs).
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length, got {a.shape[0]} and {b.shape[0]}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    out = {"n_queries": float(diff.size), "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    out |= {"wilcoxon_stat": math.nan, "p_value": math.nan}
    if diff.size == 0:
        return out
    out["mean_diff"] = float(diff.mean())
    out["ci_low"], out["ci_high"] = bootstrap_ci(diff, n_bootstrap, seed)
    if np.all(diff == 0):
        out["wilcoxon_stat"], out["p_value"] = 0.0, 1.0
    else:
        result = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
        out["wilcoxon_stat"], out["p_value"] = float(result.statistic), float(result.pvalue)
    return out


def summarize(
    runs: pd.DataFrame,
    per_query: pd.DataFrame,
    metrics: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Long table, one row per (arm, metric) for metrics logged by at least one run.

    Columns: ``arm, metric, n_runs, mean, sd, n_queries, ci_low, ci_high`` (see the module docstring);
    ``n_queries``/``ci_*`` are NaN for metrics without per-query values.
    """
    present = [m for m in metrics if m in runs.columns and runs[m].notna().any()]
    pooled_by_metric = {m: pool_queries(per_query, m) for m in present}
    rows = []
    for arm, group in runs.groupby("arm", sort=False):
        for metric in present:
            values = group[metric].dropna().to_numpy(dtype=np.float64)
            row = {"arm": arm, "metric": metric, "n_runs": float(values.size)}
            row["mean"] = float(values.mean()) if values.size else math.nan
            row["sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
            pooled = pooled_by_metric[metric]
            column = pooled[arm].dropna() if arm in pooled.columns else pd.Series(dtype=float)
            row["n_queries"] = float(column.size) if column.size else math.nan
            row["ci_low"], row["ci_high"] = bootstrap_ci(column.to_numpy(), n_bootstrap, seed)
            rows.append(row)
    columns = ["arm", "metric", "n_runs", "mean", "sd", "n_queries", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def paired_tests(
    per_query: pd.DataFrame, metrics: Sequence[str], baseline_arm: str, n_bootstrap: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Every other arm against ``baseline_arm`` per metric with per-query values (see :func:`paired_test`)."""
    rows = []
    for metric in metrics:
        pooled = pool_queries(per_query, metric)
        if baseline_arm not in pooled.columns:
            continue
        for arm in (a for a in pooled.columns if a != baseline_arm):
            result = paired_test(pooled[arm].to_numpy(), pooled[baseline_arm].to_numpy(), n_bootstrap, seed)
            rows.append({"arm": arm, "baseline": baseline_arm, "metric": metric, **result})
    columns = ["arm", "baseline", "metric", "n_queries", "mean_diff", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=[*columns, "wilcoxon_stat", "p_value"])
