"""experiments/study_report.py: the study section built from synthetic committed JSON (no training, no MLflow)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import study_report
import study_results as sr

QUERIES = [f"q{i}" for i in range(40)]
SHIFT = {"mined_only": 0.0, "naive_llm": -0.2, "grounded_no_entropy": 0.0, "grounded": 0.1}


def write_study(root: Path, seeds: tuple[int, ...] = (0, 1), skip: tuple[str, int] | None = None) -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, size=len(QUERIES))
    for arm, shift in SHIFT.items():
        for seed in seeds:
            if skip == (arm, seed):
                continue
            values = np.clip(base + shift + rng.normal(0, 0.01, size=len(QUERIES)), 0, 1)
            per_query = {
                m: dict(zip(QUERIES, values, strict=True)) for m in ("ndcg@10", "recall@100", "mrr@10")
            }
            metrics = {f"test/{m}": float(values.mean()) for m in ("ndcg@10", "recall@100", "mrr@10")}
            metrics |= {"test_start/ndcg@10": 0.45, "diag/mi_knn": 0.3 if arm == "naive_llm" else 0.01}
            metrics |= {"diag/mi_knn_perm_p95": 0.02, "data/generated_kept": 100.0, "data/queries": 40.0}
            nq_values = {f"n{i}": 0.5 - (0.3 if arm == "naive_llm" else 0.0) for i in range(30)}
            nq = {
                "metrics": {"ndcg@10": float(np.mean(list(nq_values.values())))},
                "per_query": {"ndcg@10": nq_values},
            }
            record = sr.run_result("hotpotqa", arm, seed, "q40", "id", metrics, per_query, nq)
            sr.write_json(sr.run_json_path(root, "hotpotqa", arm, seed), record)
    stock_nq = {"metrics": {"ndcg@10": 0.5}, "per_query": {"ndcg@10": {f"n{i}": 0.5 for i in range(30)}}}
    sr.write_json(root / "nq_stock.json", sr.run_result("nq", "stock", 0, "-", "", {}, {}, stock_nq))
    (root / "hotpotqa" / "grounded").mkdir(parents=True)
    manifest = {
        "counts": {"queries": 40, "queries_with_negatives": 30, "negatives_kept": 55, "rejections": {"x": 3}}
    }
    sr.write_json(root / "hotpotqa" / "grounded" / "manifest.json", manifest)


def args(root: Path, *extra: str) -> object:
    return study_report.parse_args(
        [
            "--study",
            str(root),
            "--datasets",
            "hotpotqa",
            "--seeds",
            "0,1",
            "--n-bootstrap",
            "200",
            "--print",
            *extra,
        ]
    )


def test_section_tables_claims_and_nq_flags(tmp_path: Path) -> None:
    write_study(tmp_path)
    section = study_report.build_section(args(tmp_path), tmp_path)
    assert "Missing runs" not in section
    assert "| grounded_no_entropy | 2 |" in section and "| stock | 1 |" in section
    assert "1. *Naive generated negatives hurt*" in section
    claim1 = next(line for line in section.splitlines() if line.startswith("1. "))
    assert "lower (as the paper claims)" in claim1
    claim2 = next(line for line in section.splitlines() if line.startswith("2. "))
    assert "no difference resolved" in claim2
    assert "0.3000 (0.0200) **above**" in section  # naive MI outside the permutation band
    assert "| grounded edits | 40 | 30 | 55 |" in section and "naive baseline | not generated yet" in section
    assert "Below stock on NQ: hotpotqa/naive_llm (significant)." in section
    assert section.startswith(study_report.BEGIN) and section.rstrip().endswith(study_report.END)


def test_missing_runs_are_listed_not_fatal(tmp_path: Path) -> None:
    write_study(tmp_path, skip=("grounded", 1))
    section = study_report.build_section(args(tmp_path), tmp_path)
    assert "Missing runs (1): grounded seed 1." in section
    empty = study_report.build_section(args(tmp_path / "none"), tmp_path)
    assert "Missing runs (8)" in empty and "No finished runs yet" in empty
    assert "stock encoder's NQ run is missing" in empty


def test_plots_are_written_next_to_the_results(tmp_path: Path) -> None:
    write_study(tmp_path / "study")
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nkept text\n\n## Machine and versions\n\nx\n")
    assert study_report.main([*vars_to_argv(tmp_path / "study"), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.index("kept text") < text.index(study_report.BEGIN) < text.index("## Machine and versions")
    assert (tmp_path / "study_hotpotqa_ndcg.png").is_file() and (
        tmp_path / "study_hotpotqa_shortcut.png"
    ).is_file()
    assert study_report.main([*vars_to_argv(tmp_path / "study"), "--out", str(out)]) == 0
    assert out.read_text().count(study_report.BEGIN) == 1  # replaced, not appended again


def vars_to_argv(root: Path) -> list[str]:
    return ["--study", str(root), "--datasets", "hotpotqa", "--seeds", "0,1", "--n-bootstrap", "100"]


def test_verdict_words() -> None:
    assert study_report.verdict({"ci_low": -0.2, "ci_high": -0.1}, "lower") == "lower (as the paper claims)"
    assert study_report.verdict({"ci_low": 0.1, "ci_high": 0.2}, "lower") == "higher (against the paper)"
    assert study_report.verdict({}, "higher") == "not measured"
