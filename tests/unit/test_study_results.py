"""The study's committed run records (experiments/study_results.py): export, import, missing runs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import study_results as sr


def record(arm: str = "grounded", seed: int = 0, scale: str = "q256") -> dict:
    metrics = {
        "test/ndcg@10": 0.812345678,
        "test_start/ndcg@10": 0.78,
        "diag/mi_knn": float("nan"),
        "data/generated_kept": 300.0,
        "train/loss": 1.5,
        "val/ndcg@10": 0.7,
    }
    per_query = {"ndcg@10": {"q2": 0.5, "q1": 1.0}, "recall@10": {"q1": 1.0}}
    nq = {"metrics": {"ndcg@10": 0.41}, "per_query": {"ndcg@10": {"n1": 0.25}}}
    return sr.run_result("hotpotqa", arm, seed, scale, "abc", metrics, per_query, nq)


def test_run_result_keeps_reported_metrics_rounded_and_nan_as_null() -> None:
    r = record()
    assert set(r["metrics"]) == {"test/ndcg@10", "test_start/ndcg@10", "diag/mi_knn", "data/generated_kept"}
    assert r["metrics"]["test/ndcg@10"] == 0.81235 and r["metrics"]["diag/mi_knn"] is None
    assert set(r["per_query"]) == {"ndcg@10"} and list(r["per_query"]["ndcg@10"]) == ["q1", "q2"]
    assert r["seed"] == "0" and r["nq"]["metrics"] == {"ndcg@10": 0.41}


def test_json_round_trip_and_run_record(tmp_path: Path) -> None:
    path = sr.write_json(sr.run_json_path(tmp_path, "hotpotqa", "grounded", 1), record(seed=1))
    assert path == tmp_path / "hotpotqa" / "runs" / "grounded-seed1.json"
    assert not list(path.parent.glob("*.tmp"))
    loaded = sr.load_runs(tmp_path, "hotpotqa")
    assert len(loaded) == 1
    run = sr.to_run_record(loaded[0])
    assert (run.arm, run.seed) == ("grounded", "1")
    assert math.isnan(run.metrics["diag/mi_knn"]) and run.metrics["test/ndcg@10"] == 0.81235
    assert run.per_query["ndcg@10"] == {"q1": 1.0, "q2": 0.5}
    nq = sr.to_run_record(loaded[0], part="nq")
    assert nq.metrics == {"test/ndcg@10": 0.41} and nq.per_query == {"ndcg@10": {"n1": 0.25}}


def test_read_json_refuses_a_list(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        sr.read_json(tmp_path / "x.json")


def test_missing_runs_lists_absent_and_other_scale(tmp_path: Path) -> None:
    sr.write_json(sr.run_json_path(tmp_path, "scifact", "mined_only", 0), record("mined_only", 0))
    sr.write_json(
        sr.run_json_path(tmp_path, "scifact", "mined_only", 1), record("mined_only", 1, scale="q48")
    )
    missing = sr.missing_runs(tmp_path, "scifact", ["mined_only", "grounded"], [0, 1])
    assert missing == [("grounded", "0"), ("grounded", "1")]
    at_scale = sr.missing_runs(tmp_path, "scifact", ["mined_only", "grounded"], [0, 1], scale="q256")
    assert at_scale == [("mined_only", "1"), ("grounded", "0"), ("grounded", "1")]
    assert sr.load_runs(tmp_path, "hotpotqa") == []


def test_stock_record_comes_from_the_starting_encoder() -> None:
    stock = sr.stock_record([{"metrics": {"test/ndcg@10": 0.9}}, record()])
    assert stock is not None and stock.arm == "stock" and stock.metrics == {"test/ndcg@10": 0.78}
    assert sr.stock_record([{"metrics": {}}]) is None
