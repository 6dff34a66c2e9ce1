"""The study's committed results: one small JSON per training run, and what is still missing.

Layout (under ``experiments/study/``, committed)::

    <dataset>/grounded/  <dataset>/naive/  <dataset>/causalneg_official/   generated artifacts (rows, manifest, ...)
    <dataset>/runs/<arm>-seed<k>.json                                       one training run (below)
    nq_stock.json                                                           the stock encoder on NQ, zero-shot

The generation journals are ``experiments/grounded/journal/<dataset>-<model>.jsonl``, shared with grounded_check.

A run's JSON: ``dataset, arm, seed, scale, run_id`` (MLflow, informative only), ``seconds``, ``metrics`` (final
values of ``test/*``, ``test_start/*`` = the stock encoder, ``diag/*``, ``data/*``), ``per_query``
(``{"ndcg@10": {qid: value}, ...}`` on the data set's test split) and ``nq`` (``{"metrics": {...},
"per_query": {...}}``: the trained encoder zero-shot on ``../shared/data/nq_open_oracle``). Pure functions, no
MLflow: the report and the tests build everything from these files.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from causalneg.tracking.compare import RunRecord

STUDY_DIR = Path(__file__).resolve().parent / "study"
KEPT_PREFIXES = ("test/", "test_start/", "diag/", "data/")
PER_QUERY_METRICS = ("ndcg@10", "recall@100", "mrr@10")
DIGITS = 5


ARMS = ("mined_only", "naive_llm", "grounded_no_entropy", "grounded")


def study_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options the study's scripts share: ``--datasets``, ``--arms``, ``--seeds``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hotpotqa,scifact")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="0,1,2")
    return parser


def run_json_path(study_dir: Path, dataset: str, arm: str, seed: int | str) -> Path:
    return study_dir / dataset / "runs" / f"{arm}-seed{seed}.json"


def _round(value: float) -> float | None:
    return round(float(value), DIGITS) if math.isfinite(float(value)) else None


def _per_query(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    return {
        metric: {str(q): _round(v) for q, v in sorted(values.items())}
        for metric, values in per_query.items()
        if metric in PER_QUERY_METRICS
    }


def run_result(
    dataset: str,
    arm: str,
    seed: int | str,
    scale: str,
    run_id: str,
    metrics: Mapping[str, float],
    per_query: Mapping[str, Mapping[str, float]],
    nq: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The JSON record of one run: kept metrics (see :data:`KEPT_PREFIXES`), per-query values (rounded) and
    the run's wall time in seconds (training and both test evaluations; None when unknown)."""
    kept = {k: _round(v) for k, v in sorted(metrics.items()) if k.startswith(KEPT_PREFIXES)}
    record: dict[str, Any] = {
        "dataset": dataset,
        "arm": arm,
        "seed": str(seed),
        "scale": scale,
        "run_id": run_id,
        "seconds": None if seconds is None else round(float(seconds), 1),
        "metrics": kept,
        "per_query": _per_query(per_query),
    }
    if nq is not None:
        record["nq"] = {
            "metrics": {k: _round(v) for k, v in sorted(nq.get("metrics", {}).items())},
            "per_query": _per_query(nq.get("per_query", {})),
        }
    return record


def write_json(path: Path, record: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_runs(study_dir: Path, dataset: str) -> list[dict[str, Any]]:
    """Every committed run record of ``dataset``, in file-name order."""
    folder = study_dir / dataset / "runs"
    return [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def missing_runs(
    study_dir: Path, dataset: str, arms: Iterable[str], seeds: Iterable[int | str], scale: str | None = None
) -> list[tuple[str, str]]:
    """(arm, seed) pairs with no committed JSON (or one of another ``scale``, when given), in arm-seed order."""
    missing = []
    for arm in arms:
        for seed in seeds:
            path = run_json_path(study_dir, dataset, arm, seed)
            if not path.is_file() or (scale is not None and read_json(path).get("scale") != scale):
                missing.append((arm, str(seed)))
    return missing


def nan_if_none(values: Mapping[str, float | None]) -> dict[str, float]:
    return {k: math.nan if v is None else float(v) for k, v in values.items()}


def to_run_record(record: Mapping[str, Any], part: str = "test") -> RunRecord:
    """A :class:`RunRecord` for :mod:`causalneg.tracking.compare`: ``part="test"`` (the data set's test split,
    with every kept metric) or ``part="nq"`` (the zero-shot NQ results, as ``test/*`` metrics)."""
    run_id = f"{record['arm']}-seed{record['seed']}"
    if part == "nq":
        nq = record.get("nq") or {}
        metrics = {f"test/{k}": v for k, v in nan_if_none(nq.get("metrics", {})).items()}
        per_query = {k: nan_if_none(v) for k, v in (nq.get("per_query") or {}).items()}
    else:
        metrics = nan_if_none(record.get("metrics", {}))
        per_query = {k: nan_if_none(v) for k, v in (record.get("per_query") or {}).items()}
    return RunRecord(run_id, str(record["arm"]), str(record["seed"]), metrics, per_query)


def stock_record(records: Sequence[Mapping[str, Any]]) -> RunRecord | None:
    """The stock encoder on the test split, as an arm ``stock``: the first run's ``test_start/*`` metrics (every
    run starts from the same encoder and evaluates it on the same test split)."""
    for record in records:
        start = {k: v for k, v in record.get("metrics", {}).items() if k.startswith("test_start/")}
        if start:
            metrics = {"test/" + k.removeprefix("test_start/"): v for k, v in nan_if_none(start).items()}
            return RunRecord("stock", "stock", "-", metrics, {})
    return None


def main(argv: list[str] | None = None) -> int:
    """Print, per data set, each committed run's test nDCG@10 / Recall@100 / MRR@10 and NQ nDCG@10, and the
    (arm, seed) pairs still missing. It only reads JSON (seconds), so ``--smoke`` (CI) runs it as it is,
    normally with ``--study`` naming a small folder (``run_study.py --smoke --study DIR`` writes one)."""
    parser = study_parser(main.__doc__)
    parser.add_argument("--study", default=str(STUDY_DIR), help="results folder")
    parser.add_argument("--scale", default=None, help="count a run of another scale (e.g. q256) as missing")
    parser.add_argument("--smoke", action="store_true", help="CI: the same (it only reads)")
    args = parser.parse_args(argv)
    study = Path(args.study)
    arms, seeds = args.arms.split(","), args.seeds.split(",")
    for dataset in args.datasets.split(","):
        print(f"### {dataset} ({study / dataset / 'runs'})")
        print("| arm | seed | scale | test/ndcg@10 | test/recall@100 | test/mrr@10 | NQ ndcg@10 |")
        print("|---|---|---|---|---|---|---|")
        for record in load_runs(study, dataset):
            metrics = nan_if_none(record.get("metrics", {}))
            nq = nan_if_none((record.get("nq") or {}).get("metrics", {}))
            cells = [metrics.get(f"test/{m}", math.nan) for m in ("ndcg@10", "recall@100", "mrr@10")]
            cells.append(nq.get("ndcg@10", math.nan))
            print(
                f"| {record['arm']} | {record['seed']} | {record.get('scale')} | "
                + " | ".join(f"{value:.4f}" for value in cells)
                + " |"
            )
        missing = missing_runs(study, dataset, arms, seeds, args.scale)
        print(f"missing: {len(missing)} run(s) {missing}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
