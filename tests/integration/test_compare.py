"""Comparison statistics on synthetic frames, and stage=compare end to end on a real SQLite MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from causalneg.tracking.compare import (
    RunRecord,
    bootstrap_ci,
    paired_test,
    paired_tests,
    per_query_frame,
    pool_queries,
    runs_frame,
    summarize,
)
from causalneg.tracking.names import mlflow_metric_name
from causalneg.tracking.render import render_markdown

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
QUERY_METRICS = ["test/ndcg@10", "test/recall@100", "test/mrr@10"]
ARM_SHIFT = {"mined_only": 0.0, "causalneg": 0.05}
N_QUERIES = 40


def synthetic_run(
    arm: str, seed: int, base: np.ndarray
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per-query values = base + arm shift + seed noise; run metrics = their means, as in a real run."""
    rng = np.random.default_rng(100 + seed + (7 if arm == "causalneg" else 0))
    per_query: dict[str, dict[str, float]] = {}
    metrics: dict[str, float] = {}
    for offset, name in enumerate(m.split("/")[1] for m in QUERY_METRICS):
        values = np.clip(base + 0.1 * offset + ARM_SHIFT[arm] + 0.01 * rng.normal(size=base.size), 0, 1)
        per_query[name] = {f"q{i}": float(v) for i, v in enumerate(values)}
        metrics[f"test/{name}"] = float(values.mean())
    metrics["diag/mi_knn"] = 0.02 + 0.01 * seed if arm == "causalneg" else 0.05 + 0.01 * seed
    metrics["diag/mi_perm_p95"] = 0.01
    metrics["diag/probe_auc_blind"] = 0.6 if arm == "causalneg" else 0.8
    return metrics, per_query


def expected_records() -> list[RunRecord]:
    base = np.random.default_rng(0).uniform(0.2, 0.6, size=N_QUERIES)
    records = []
    for arm in ARM_SHIFT:
        for seed in (0, 1):
            metrics, per_query = synthetic_run(arm, seed, base)
            records.append(RunRecord(f"{arm}-{seed}", arm, str(seed), metrics, per_query))
    return records


def make_store(tmp_path: Path, experiment: str = "ablation") -> str:
    """A real SQLite MLflow store with 2 arms x 2 seeds of finished runs, plus runs compare must ignore."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=(tmp_path / "mlartifacts").as_uri())

    def log_run(tags: dict[str, str], metrics: dict[str, float], per_query: dict | None, status: str) -> None:
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        for key, value in metrics.items():
            name = mlflow_metric_name(key)  # as the train stage logs it: test/ndcg_at_10
            client.log_metric(run_id, name, value - 0.5, step=0)  # an early value; the last one is "final"
            client.log_metric(run_id, name, value, step=10)
        if per_query is not None:
            client.log_text(run_id, json.dumps(per_query), "metrics/test_per_query.json")
        client.set_terminated(run_id, status=status)

    for record in expected_records():
        log_run({"arm": record.arm, "seed": record.seed}, record.metrics, record.per_query, "FINISHED")
    log_run({"arm": "crashed", "seed": "0"}, {"test/ndcg@10": 0.9}, None, "FAILED")
    log_run({"seed": "0"}, {"test/ndcg@10": 0.9}, None, "FINISHED")  # no arm tag
    log_run({"arm": "old", "summary": "true"}, {"test/ndcg@10": 0.9}, None, "FINISHED")
    return uri


# -- pure statistics -----------------------------------------------------------------------------------------


def test_bootstrap_ci_matches_normal_theory_and_is_seeded() -> None:
    values = np.random.default_rng(1).normal(0.5, 0.2, size=400)
    low, high = bootstrap_ci(values, n_bootstrap=2000, seed=0)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert bootstrap_ci(values, n_bootstrap=2000, seed=0) == (low, high)
    assert all(math.isnan(x) for x in bootstrap_ci([np.nan]))


def test_paired_test_detects_a_shift_and_not_its_absence() -> None:
    rng = np.random.default_rng(2)
    base = rng.uniform(size=200)
    better = base + 0.1 + 0.02 * rng.normal(size=200)
    result = paired_test(better, base, n_bootstrap=500, seed=0)
    assert result["n_queries"] == 200
    assert result["mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert 0.0 < result["ci_low"] < 0.1 < result["ci_high"]
    assert result["p_value"] < 1e-10
    same = paired_test(base, base)
    assert same["mean_diff"] == 0.0 and same["p_value"] == 1.0
    noisy = paired_test(base + 0.05 * rng.normal(size=200), base, n_bootstrap=500)
    assert noisy["p_value"] > 0.01 and noisy["ci_low"] < 0 < noisy["ci_high"]
    with_nan = paired_test([1.0, np.nan, 3.0], [0.0, 1.0, 1.0])
    assert with_nan["n_queries"] == 2 and with_nan["mean_diff"] == 1.5
    with pytest.raises(ValueError, match="same length"):
        paired_test([1.0], [1.0, 2.0])


def test_summarize_pools_seeds_per_query_and_aggregates_runs() -> None:
    records = expected_records()
    runs = runs_frame(records)
    per_query = per_query_frame(records, QUERY_METRICS)
    assert len(per_query) == 4 * 3 * N_QUERIES
    pooled = pool_queries(per_query, "test/ndcg@10")
    q0 = [r.per_query["ndcg@10"]["q0"] for r in records if r.arm == "causalneg"]
    assert pooled.loc["q0", "causalneg"] == pytest.approx(np.mean(q0))

    metrics = [*QUERY_METRICS, "diag/mi_knn", "diag/not_logged"]
    summary = summarize(runs, per_query, metrics, n_bootstrap=300, seed=0).set_index(["arm", "metric"])
    assert "diag/not_logged" not in summary.index.get_level_values("metric")
    row = summary.loc[("causalneg", "test/ndcg@10")]
    values = [r.metrics["test/ndcg@10"] for r in records if r.arm == "causalneg"]
    assert row["n_runs"] == 2 and row["n_queries"] == N_QUERIES
    assert row["mean"] == pytest.approx(np.mean(values)) and row["sd"] == pytest.approx(
        np.std(values, ddof=1)
    )
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    diag = summary.loc[("mined_only", "diag/mi_knn")]
    assert diag["mean"] == pytest.approx(0.055) and diag["sd"] == pytest.approx(np.std([0.05, 0.06], ddof=1))
    assert math.isnan(diag["ci_low"])  # no per-query values for diagnostics


def test_paired_tests_and_markdown() -> None:
    records = expected_records()
    runs, per_query = runs_frame(records), per_query_frame(records, QUERY_METRICS)
    tests = paired_tests(per_query, QUERY_METRICS, "mined_only", n_bootstrap=300)
    assert list(tests["arm"]) == ["causalneg"] * 3
    ndcg = tests.set_index("metric").loc["test/ndcg@10"]
    assert ndcg["mean_diff"] == pytest.approx(0.05, abs=0.01) and ndcg["p_value"] < 1e-6
    assert paired_tests(per_query, QUERY_METRICS, "absent_arm").empty

    summary = summarize(runs, per_query, [*QUERY_METRICS, "diag/mi_knn"], n_bootstrap=300)
    text = render_markdown(summary, tests, "mined_only", "ablation")
    lines = text.splitlines()
    mined_rows = [line for line in lines if line.startswith("| mined_only |")]
    assert len(mined_rows) == 2  # one in the retrieval table, one in the final-values table
    cell = summary.set_index(["arm", "metric"]).loc[("mined_only", "test/ndcg@10")]
    assert (
        f"{cell['mean']:.4f} ± {cell['sd']:.4f} [{cell['ci_low']:.4f}, {cell['ci_high']:.4f}]"
        in mined_rows[0]
    )
    assert lines.index(mined_rows[0]) < lines.index(next(x for x in lines if x.startswith("| causalneg |")))
    assert "| causalneg | test/ndcg@10 | 40 | +0.05" in text


# -- MLflow store end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for this module (creating an MLflow SQLite schema takes seconds)."""
    return make_store(tmp_path_factory.mktemp("mlflow"))


def compare_config(tmp_path: Path, uri: str) -> DictConfig:
    """The compare group from conf/compare/default.yaml under the keys the stage relies on."""
    group = OmegaConf.load(REPO_ROOT / "conf" / "compare" / "default.yaml")
    cfg = OmegaConf.create(
        {
            "paths": {"output_dir": str(tmp_path / "run")},
            "logger": {"tracking_uri": uri, "experiment_name": "ablation"},
        }
    )
    cfg.compare = group
    cfg.compare.n_bootstrap = 200
    return cfg


def test_load_runs_skips_unfinished_untagged_and_summary_runs(store: str) -> None:
    from causalneg.tracking.mlflow_io import load_experiment_runs

    records, notes = load_experiment_runs(store, "ablation")
    assert sorted((r.arm, r.seed) for r in records) == [
        ("causalneg", "0"),
        ("causalneg", "1"),
        ("mined_only", "0"),
        ("mined_only", "1"),
    ]
    expected = {r.run_id: r for r in expected_records()}
    for record in records:
        reference = expected[f"{record.arm}-{record.seed}"]
        assert record.metrics["test/ndcg@10"] == pytest.approx(
            reference.metrics["test/ndcg@10"]
        )  # final value
        assert record.per_query == reference.per_query
    assert any("no 'arm' tag" in note for note in notes)


def test_compare_stage_end_to_end(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from causalneg.errors import ConfigError
    from causalneg.stages.compare import run

    uri = store
    cfg = compare_config(tmp_path, uri)
    assert cfg.compare.experiment == "latest"  # the experiment whose last training run ended last
    result = run(cfg)
    out = tmp_path / "run" / "compare"
    assert result["n_runs"] == 4 and result["arms"] == ["mined_only", "causalneg"]
    printed = capsys.readouterr().out
    assert "compare.experiment=latest: comparing 'ablation'" in printed
    assert "| mined_only | 2 |" in printed and "| causalneg | 2 |" in printed
    assert (out / "summary.md").read_text() == result["markdown"]

    summary = pd.read_csv(out / "summary.csv").set_index(["arm", "metric"])
    reference = expected_records()
    for arm in ARM_SHIFT:
        values = [r.metrics["test/ndcg@10"] for r in reference if r.arm == arm]
        assert summary.loc[(arm, "test/ndcg@10"), "mean"] == pytest.approx(np.mean(values))
    tests = pd.read_csv(out / "paired_tests.csv")
    assert set(tests["metric"]) == set(QUERY_METRICS) and (tests["p_value"] < 1e-6).all()
    for name in ("ndcg_by_arm.png", "shortcut_by_arm.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(tracking_uri=uri)
    summary_run = client.get_run(result["summary_run_id"])
    assert summary_run.data.tags["summary"] == "true" and summary_run.info.status == "FINISHED"
    logged = {Path(a.path).name for a in client.list_artifacts(summary_run.info.run_id, "compare")}
    assert {
        "summary.md",
        "summary.csv",
        "paired_tests.csv",
        "ndcg_by_arm.png",
        "shortcut_by_arm.png",
    } <= logged

    again = run(cfg)  # the summary run just logged is not compared as an arm
    assert again["n_runs"] == 4 and again["arms"] == ["mined_only", "causalneg"]

    cfg.compare.experiment = "nope"
    with pytest.raises(ConfigError, match=r"no MLflow experiment named 'nope'.*ablation"):
        run(cfg)
    cfg.compare.experiment = "latest"
    cfg.logger.tracking_uri = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(ConfigError, match="no finished training run"):
        run(cfg)


def test_metric_names_round_trip() -> None:
    from causalneg.tracking.names import metric_name_from_mlflow

    assert mlflow_metric_name("test/ndcg@10") == "test/ndcg_at_10"
    for name in ("test/ndcg@10", "test/recall@100", "diag/mi_knn"):
        assert metric_name_from_mlflow(mlflow_metric_name(name)) == name
