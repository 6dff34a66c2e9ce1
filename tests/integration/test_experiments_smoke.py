"""Every script under experiments/ in its smoke mode (CI, issue 15): run as a subprocess, its output checked.

Each smoke run uses tiny sizes and the models the other tests use (all-MiniLM-L6-v2 from its package, a tiny
random Llama built in-process by tests/tiny_generators.py); scripts that read ../shared/data are skipped with
the fixture's message when it is absent. Checks are on what the run produced: files written, numbers finite.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXPERIMENTS = REPO_ROOT / "experiments"
# Scripts whose smoke run lives in another test module.
COVERED_ELSEWHERE = {"recipe_dev.py": "tests/integration/test_recipe_dev_smoke.py"}
SMOKE_TESTED = {
    "bench_generation.py",
    "bench_index_recall.py",
    "bench_loss.py",
    "bench_llamacpp_options.py",
    "bench_quality.py",
    "bench_scale_costs.py",
    "bench_throughput.py",
    "calibrate_same_thing.py",
    "grounded_check.py",
    "grounded_rules.py",
    "run_study.py",
    "study_report.py",
    "study_results.py",
}
NUMBER = re.compile(r"(?<![\w.])-?(?:\d+\.\d+|\d+|nan|inf)(?![\w.])", re.IGNORECASE)


def run_script(name: str, *args: str, home: Path, timeout: int = 900) -> str:
    """Run ``experiments/<name> --smoke *args`` with one thread; returns stdout (fails with stderr's tail)."""
    env = dict(
        os.environ,
        CAUSALNEG_SHARED_DATA=str(SHARED_DATA),
        CAUSALNEG_HOME=str(home),
        CAUSALNEG_CACHE_DIR=str(home / "cache"),
        PYTHONPATH=str(REPO_ROOT),
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run(
        [sys.executable, str(EXPERIMENTS / name), "--smoke", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{name} --smoke failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def table_numbers(out: str) -> list[float]:
    """Every number in the Markdown table rows of ``out`` (separator rows excluded)."""
    numbers = []
    for line in out.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            numbers += [float(x) for x in NUMBER.findall(line)]
    return numbers


def assert_finite(values: list[float], what: str) -> None:
    assert values, f"{what}: no numbers"
    bad = [v for v in values if not math.isfinite(v)]
    assert not bad, f"{what}: non-finite values {bad}"


def test_every_script_has_a_smoke_test() -> None:
    scripts = {p.name for p in EXPERIMENTS.glob("*.py")}
    assert scripts == SMOKE_TESTED | set(COVERED_ELSEWHERE), (
        "a script under experiments/ without a smoke test (add it here): "
        f"{sorted(scripts ^ (SMOKE_TESTED | set(COVERED_ELSEWHERE)))}"
    )
    for name in scripts:
        assert "--smoke" in (EXPERIMENTS / name).read_text(encoding="utf-8"), f"{name} has no --smoke mode"
    for path in COVERED_ELSEWHERE.values():
        assert (REPO_ROOT / path).is_file()


def test_bench_loss(tmp_path: Path) -> None:
    out = run_script("bench_loss.py", home=tmp_path)
    numbers = table_numbers(out)
    assert_finite(numbers, "bench_loss")
    assert "| 384 |" in out and "| 1024 |" in out


def test_calibrate_same_thing(tmp_path: Path) -> None:
    target = tmp_path / "same_thing.json"
    run_script("calibrate_same_thing.py", "--json", str(target), home=tmp_path)
    record = json.loads(target.read_text())
    assert record["model"] == "tiny-llama" and len(record["pairs"]) == 4
    assert all(0.0 <= pair["p_yes"] <= 1.0 for pair in record["pairs"])
    assert set(record["thresholds"]) == {"0.5", "0.55", "0.6", "0.65", "0.7"}


@pytest.mark.parametrize("positives", ["one", "multi"])
def test_bench_quality_semanlink(tmp_path: Path, positives: str) -> None:
    """Semanlink ships in a package: this runs without ../shared/data (the BEIR sets are covered below)."""
    target = tmp_path / "quality.json"
    run_script(
        "bench_quality.py", "--datasets", "semanlink", "--positives", positives, "--json", str(target),
        home=tmp_path,
    )  # fmt: skip
    check_quality(json.loads(target.read_text()), ["semanlink"])


@pytest.mark.shared_data
def test_bench_quality_beir(shared_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "quality.json"
    run_script("bench_quality.py", "--datasets", "scifact", "--positives", "pairs", "--json", str(target),
               home=tmp_path)  # fmt: skip
    check_quality(json.loads(target.read_text()), ["scifact"])


def check_quality(record: dict[str, Any], datasets: list[str]) -> None:
    assert sorted(record["results"]) == sorted(datasets)
    for name in datasets:
        arms = record["results"][name]
        assert set(arms) == {"stock", "bm25", "ours", "peer"}
        for arm, metrics in arms.items():
            assert 0.0 <= metrics["ndcg@10"] <= 1.0, (name, arm, metrics)
            assert math.isfinite(metrics["wall"])
        for arm in ("ours", "peer"):
            assert arms[arm]["train_eps"] > 0 and arms[arm]["examples"] > 0
        # the stage's start-of-run evaluation is the stock model, scored the same way
        assert arms["ours"]["start"]["ndcg@10"] == pytest.approx(arms["stock"]["ndcg@10"], abs=1e-6)


@pytest.mark.shared_data
def test_bench_throughput(shared_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "throughput.json"
    run_script("bench_throughput.py", "--json", str(target), home=tmp_path)
    rows = json.loads(target.read_text())["rows"]
    assert {(r["task"], r["variant"]) for r in rows} == {
        (task, variant) for task in ("train", "encode") for variant in ("peer", "ours-32")
    }
    assert all(math.isfinite(r["rate"]) and r["rate"] > 0 for r in rows)


@pytest.mark.shared_data
def test_bench_scale_costs(shared_data_dir: Path, tmp_path: Path) -> None:
    out = run_script("bench_scale_costs.py", home=tmp_path)
    rate = re.search(r"HotpotQA passages: ([\d.]+) passages/s", out)
    assert rate is not None and float(rate.group(1)) > 0, out
    assert "GFLOP/passage" in out and "prompt tokens (chars / 4) per query" in out


@pytest.mark.shared_data
def test_bench_index_recall(shared_data_dir: Path, tmp_path: Path) -> None:
    out = run_script("bench_index_recall.py", home=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith(("flat", "ivf", "hnsw"))]
    assert len(rows) == 9, out
    values = [float(x) for line in rows for x in NUMBER.findall(line.split(maxsplit=2)[-1])]
    assert_finite(values, "bench_index_recall")
    assert rows[0].split()[2:4] == ["1.0000", "1.0000"]  # flat against itself


@pytest.mark.shared_data
def test_bench_generation(shared_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "generation.json"
    run_script("bench_generation.py", "--json", str(target), home=tmp_path)
    (result,) = json.loads(target.read_text())
    assert result["backend"] == "transformers" and result["requests"]["decompose"] == 2
    assert result["tokens"]["decompose"] > 0 and math.isfinite(result["seconds"]["decompose"])
    assert result["counts"]["per_stage"]["decompose"]["requests"] == 2


@pytest.mark.shared_data
def test_bench_llamacpp_options(shared_data_dir: Path, tmp_path: Path) -> None:
    """SmolLM2's GGUF on llama.cpp, one grounded query: the backend as it was, and its defaults."""
    import importlib.util

    from causalneg.generation.generator_models import MissingGeneratorPackage, resolve_gguf

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (make install builds it)")
    try:
        resolve_gguf("smollm2", tmp_path / "generators")
    except MissingGeneratorPackage as exc:
        pytest.skip(str(exc))
    target = tmp_path / "llamacpp_options.json"
    run_script("bench_llamacpp_options.py", "--json", str(target), home=tmp_path)
    result = json.loads(target.read_text())
    assert set(result) == {"prefix_states=0,masks=llama_cpp", "defaults"}
    for arm in result.values():
        assert arm["stages"]["all"]["requests"] > 0 and arm["stages"]["decompose"]["requests"] >= 1
        assert_finite([row["seconds"] for row in arm["stages"].values()] + [arm["wall_s"]], "seconds")


@pytest.mark.shared_data
def test_grounded_check_and_rules(shared_data_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "GROUNDED.md"
    run_script("grounded_check.py", "--report", str(report), home=tmp_path)
    text = report.read_text()
    assert "## scifact" in text and "| kept negatives |" in text
    assert "No complete grounded artifact" not in text
    # the probe's AUC is nan by design below 5 queries (the smoke's naive rows): its other rows must be finite
    # "| grounded, all queries | queries | generated | mined | mean ± sd | range | fold seed 0 |"
    probe = re.search(
        r"^\| grounded, all queries \| (\d+) \| \d+ \| \d+ \| ([^|±]+) ± ([^|]+) \| [^|]+ \| ([^|]+) \|$",
        text,
        re.MULTILINE,
    )
    assert probe is not None and int(probe.group(1)) >= 5, text
    assert all(math.isfinite(float(probe.group(i))) for i in (2, 3, 4)), text
    reference = re.search(
        r"^\| reference: the unedited positives[^|]* \| \d+ \| \d+ \| \d+ \| ([^|±]+) ±", text, re.M
    )
    assert reference is not None and math.isfinite(float(reference.group(1))), text
    measures = "\n".join(
        line for line in text.splitlines() if not line.startswith(("| grounded,", "| naive,", "| reference:"))
    )
    assert_finite(table_numbers(measures), "grounded_check")
    out = run_script("grounded_rules.py", "--home", str(tmp_path), home=tmp_path)
    assert "| (all kept) |" in out
    assert_finite(table_numbers(out), "grounded_rules")


@pytest.mark.shared_data
def test_run_study_then_results_and_report(shared_data_dir: Path, tmp_path: Path) -> None:
    """run_study's smoke run writes one real run record; study_results and study_report read it."""
    study = tmp_path / "study"
    run_script("run_study.py", "--study", str(study), home=tmp_path)
    (record_path,) = (study / "scifact" / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["arm"] == "mined_only" and record["scale"] == "q8"
    assert 0.0 <= record["metrics"]["test/ndcg@10"] <= 1.0
    assert 0.0 <= record["nq"]["metrics"]["ndcg@10"] <= 1.0
    assert (study / "nq_stock.json").is_file()
    selection = ["--study", str(study), "--datasets", "scifact", "--arms", "mined_only", "--seeds", "0"]
    out = run_script("study_results.py", *selection, home=tmp_path)
    assert "| mined_only | 0 | q8 |" in out and "missing: 0 run(s)" in out
    results = tmp_path / "report" / "RESULTS.md"
    results.parent.mkdir()
    run_script("study_report.py", *selection, "--out", str(results), home=tmp_path)
    text = results.read_text()
    assert "| mined_only | 1 |" in text and (results.parent / "study_scifact_ndcg.png").is_file()
