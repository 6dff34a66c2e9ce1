"""MLflow runs for stages: a reachable store checked at start-up, the Lightning logger, and a final status
that is never left RUNNING (FINISHED, FAILED, or KILLED on Ctrl-C / SIGTERM).

A process killed with SIGKILL cannot mark its run. So a training stage records its run id in a run file
(``<output_dir>/mlflow_run.json``): the next start in the same folder continues that run when it resumes from
a checkpoint (the run gets a ``resumed`` tag counting the restarts), and otherwise marks it KILLED if it was
left RUNNING before starting a new one.
"""

from __future__ import annotations

import fcntl
import json
import signal
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from causalneg.artifacts import atomic_write_json, load_manifest
from causalneg.errors import ConfigError
from causalneg.tracking.names import mlflow_metric_name


class RunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with metric names made MLflow-safe the same way everywhere."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({mlflow_metric_name(k): v for k, v in metrics.items()}, step=step)


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server is down (instead of hanging on retries)."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise ConfigError(
                f"MLflow tracking server at logger.tracking_uri={uri} is not reachable ({err}); start it, or use "
                "the default local store (logger.tracking_uri=sqlite:///<dir>/mlflow.db)"
            ) from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def artifact_location(uri: str, explicit: str | None = None) -> str | None:
    """Artifacts of a new experiment go beside a SQLite store (MLflow's default is ./mlruns in the cwd)."""
    if explicit:
        return explicit
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
    return None


@dataclass(frozen=True)
class RunSpec:
    """A stage's MLflow run: store, experiment and run name, tags, flat params and the resolved config as YAML
    (built from the config by :func:`causalneg.stages.specs.run_spec`)."""

    tracking_uri: str
    experiment_name: str
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    config_yaml: str = ""
    artifact_location: str | None = None


def previous_run(run_file: Path, uri: str, resume: bool) -> str | None:
    """The run recorded in ``run_file`` to continue (when ``resume``), else None; a run of that file left
    RUNNING by a killed process is marked KILLED first (a new run follows)."""
    try:
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
        run_id, recorded_uri = str(recorded["run_id"]), str(recorded["tracking_uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no run file (first start) or an unreadable one: start a new run
    if recorded_uri != uri:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # deleted meanwhile
    if resume:
        count = int(run.data.tags.get("resumed", "0")) + 1
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "resumed", str(count))
        return run_id
    if run.info.status == "RUNNING":
        note = f"left RUNNING by a killed process; marked KILLED by the next start in {run_file.parent}"
        client.set_tag(run_id, "killed_note", note)
        client.set_terminated(run_id, "KILLED")
    return None


def build_mlflow_logger(spec: RunSpec, run_file: Path | None = None, resume: bool = False) -> RunLogger:
    """An MLFlowLogger for the run ``spec`` describes, tagged, holding its params and resolved config.

    With ``run_file`` the run id is recorded there, and the run it recorded before is continued when ``resume``
    (the caller resumes training from a checkpoint) or else closed as KILLED if still RUNNING (module docstring).
    """
    with _store_lock(
        spec.tracking_uri
    ):  # ranks of a torchrun/SLURM job start together: one creates the tables
        logger = _build_logger(spec, run_file, resume)
    return logger


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<db>.lock`` beside a ``sqlite:///`` store (no-op for other stores): MLflow
    creates and migrates the tables on first use, and two processes doing it at once fail."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_logger(spec: RunSpec, run_file: Path | None, resume: bool) -> RunLogger:
    uri = spec.tracking_uri
    check_tracking_uri(uri)
    # Under a multi-process launch only rank 0 owns the run (Lightning gives the others a dummy experiment): the
    # others neither continue nor close a recorded run, nor record theirs.
    rank_zero = int(getattr(rank_zero_only, "rank", 0)) == 0
    run_id = previous_run(run_file, uri, resume) if run_file is not None and rank_zero else None
    logger = RunLogger(
        experiment_name=spec.experiment_name,
        tracking_uri=uri,
        run_name=spec.run_name,
        tags=dict(spec.tags),
        log_model=False,
        artifact_location=artifact_location(uri, spec.artifact_location),
        run_id=run_id,
    )
    if run_id is None:
        logger.log_hyperparams({k: str(v)[:500] for k, v in spec.params.items()})
    # A continued run keeps its first params (MLflow refuses changed values); the restart's config is kept too.
    config_file = "config/run.yaml" if run_id is None else "config/resumed_run.yaml"
    log_text(logger, spec.config_yaml, config_file)
    if run_file is not None and rank_zero:
        atomic_write_json(run_file, {"run_id": logger.run_id, "tracking_uri": uri})
    return logger


def log_text(logger: MLFlowLogger, text: str, artifact_file: str) -> None:
    logger.experiment.log_text(logger.run_id, text, artifact_file)


def log_json(logger: MLFlowLogger, obj: Any, artifact_file: str) -> None:
    log_text(logger, json.dumps(obj, indent=1, sort_keys=True, default=str), artifact_file)


def log_file(logger: MLFlowLogger, path: str | Path, artifact_path: str | None = None) -> None:
    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def log_artifact_fingerprints(logger: MLFlowLogger, directories: Mapping[str, Path]) -> None:
    """Tag the run with the fingerprint of each artifact it consumed (``artifact.<name>``) and keep their
    manifests' identity as ``artifacts/consumed.json``: a result traces back to its exact negatives. Tags, not
    params: a resumed run sets the same values again."""
    consumed = {}
    for name, directory in directories.items():
        manifest = load_manifest(directory)
        consumed[name] = {"fingerprint": manifest.fingerprint, "kind": manifest.kind, "path": str(directory)}
        logger.experiment.set_tag(logger.run_id, f"artifact.{name}", manifest.fingerprint)
    if consumed:
        log_json(logger, consumed, "artifacts/consumed.json")


def log_metrics(logger: MLFlowLogger, metrics: dict[str, float], step: int | None = None) -> None:
    logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises ``SystemExit(128 + SIGTERM)`` once, so ``finally`` blocks
    and status updates run (Python's default action would end the process on the spot)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:  # a second SIGTERM must not interrupt the clean-up of the first
            fired = True
            raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def terminal_status(logger: MLFlowLogger) -> Iterator[None]:
    """Mark the run FINISHED on success, KILLED on KeyboardInterrupt/SystemExit (incl. SIGTERM, see
    :func:`sigterm_exits`), FAILED on any other error."""
    try:
        with sigterm_exits():
            yield
    except (KeyboardInterrupt, SystemExit):
        logger.experiment.set_terminated(logger.run_id, "KILLED")
        raise
    except BaseException:
        logger.experiment.set_terminated(logger.run_id, "FAILED")
        raise
    else:
        logger.experiment.set_terminated(logger.run_id, "FINISHED")


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="causalneg-")
