"""MLflow I/O for comparisons: read finished runs of an experiment, log a summary run.

Run conventions (set by the train stage): tags ``arm`` and ``seed``; final metrics ``test/...`` and
``diag/...``; artifact ``metrics/test_per_query.json`` =
``{"ndcg@10": {qid: value}, "recall@100": {...}, ...}``.
MLflow forbids '@' in metric names, so the train stage stores ``test/ndcg@10`` as ``test/ndcg_at_10``
(:mod:`causalneg.tracking.names`); runs are read back under the canonical names. Summary runs carry the tag
``summary=true`` and are never read back as arms.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from causalneg.errors import ConfigError, DataError
from causalneg.tracking.compare import RunRecord
from causalneg.tracking.names import metric_name_from_mlflow

PER_QUERY_ARTIFACT = "metrics/test_per_query.json"
SUMMARY_TAG = "summary"


def _experiment_id(client: MlflowClient, tracking_uri: str, experiment_name: str) -> str:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ConfigError(
            f"compare.experiment: no MLflow experiment named {experiment_name!r} at {tracking_uri} "
            f"(experiments there: {known})"
        )
    return str(experiment.experiment_id)


def latest_experiment(tracking_uri: str) -> str:
    """Name of the experiment whose most recent FINISHED arm run (tag ``arm``, not a summary) ended last.

    What ``compare.experiment=latest`` (the default) compares: right after ``+experiment=ablation_entropy``
    that is the ablation's experiment, so ``python run.py stage=compare`` needs no argument.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    best: tuple[int, str] | None = None
    for experiment in client.search_experiments():
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.end_time DESC"],
            max_results=50,
        )
        arm_runs = [r for r in runs if "arm" in r.data.tags and r.data.tags.get(SUMMARY_TAG) != "true"]
        if arm_runs:
            key = (int(arm_runs[0].info.end_time or 0), str(experiment.name))
            best = key if best is None or key > best else best
    if best is None:
        raise ConfigError(
            f"compare.experiment=latest: no finished training run at {tracking_uri}; train first or name the "
            "experiment (compare.experiment=NAME)"
        )
    return best[1]


def finished_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every FINISHED run of the experiment (all result pages)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """Turn off MLflow's per-file download progress bars (one per run would flood the log), then restore."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def read_per_query(
    client: MlflowClient, run_id: str, artifact: str, tmp_dir: str
) -> dict[str, dict[str, float]]:
    """The run's per-query artifact as ``{metric_key: {query_id: value}}``; {} when the run has none."""
    folder = posixpath.dirname(artifact)
    if artifact not in {info.path for info in client.list_artifacts(run_id, folder or None)}:
        return {}
    local = client.download_artifacts(run_id, artifact, tmp_dir)
    where = f"runs:/{run_id}/{artifact}"
    try:
        data = json.loads(Path(local).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"invalid JSON: {error}", path=where, line=error.lineno) from error
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError("expected {metric: {query_id: value}}", path=where)
    try:
        return {str(k): {str(q): float(x) for q, x in v.items()} for k, v in data.items()}
    except (TypeError, ValueError) as error:
        raise DataError(f"non-numeric per-query value: {error}", path=where) from error


def read_json_artifact(tracking_uri: str, run_id: str, artifact: str) -> Any | None:
    """A run's JSON artifact (e.g. ``diagnostics/diagnostics_history.json``), or None if the run has none."""
    client = MlflowClient(tracking_uri=tracking_uri)
    folder = posixpath.dirname(artifact)
    if artifact not in {info.path for info in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory(prefix="causalneg-artifact-") as tmp, _quiet_downloads():
        local = client.download_artifacts(run_id, artifact, tmp)
        return json.loads(Path(local).read_text(encoding="utf-8"))


def load_experiment_runs(
    tracking_uri: str, experiment_name: str, per_query_artifact: str = PER_QUERY_ARTIFACT
) -> tuple[list[RunRecord], list[str]]:
    """Finished, non-summary runs of an experiment as :class:`RunRecord` objects, plus notes on skipped runs.

    Raises:
        ConfigError: the experiment does not exist.
        DataError: a per-query artifact is malformed (names the run and file).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment_name)
    records: list[RunRecord] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="causalneg-compare-") as tmp, _quiet_downloads():
        for run in finished_runs(client, experiment_id):
            run_id, tags = run.info.run_id, run.data.tags
            if tags.get(SUMMARY_TAG, "").lower() == "true":
                continue
            if not tags.get("arm"):
                notes.append(f"run {run_id}: no 'arm' tag; skipped")
                continue
            per_query = read_per_query(client, run_id, per_query_artifact, tmp)
            if not per_query:
                notes.append(f"run {run_id} ({tags['arm']}): no {per_query_artifact}; no per-query intervals")
            metrics = {metric_name_from_mlflow(k): float(v) for k, v in run.data.metrics.items()}
            records.append(RunRecord(run_id, tags["arm"], tags.get("seed", ""), metrics, per_query))
    return records, notes


def log_summary_run(
    tracking_uri: str,
    experiment_name: str,
    local_dir: str | Path,
    tags: dict[str, str],
    artifact_path: str = "compare",
    run_name: str = "compare-summary",
) -> str:
    """Create a run tagged ``summary=true`` in the experiment, upload ``local_dir`` to it; returns its id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment_name)
    run = client.create_run(experiment_id, tags={**tags, SUMMARY_TAG: "true"}, run_name=run_name)
    run_id = run.info.run_id
    try:
        client.log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return str(run_id)
