"""MLflow runs for stages: a reachable store checked at start-up, the Lightning logger, and a final status
that is never left RUNNING (FINISHED, FAILED, or KILLED on Ctrl-C / SIGTERM)."""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from causalneg.config import flatten, plain_dict
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


def artifact_location(log_cfg: DictConfig) -> str | None:
    """Artifacts of a new experiment go beside a SQLite store (MLflow's default is ./mlruns in the cwd)."""
    if log_cfg.get("artifact_location"):
        return str(log_cfg.artifact_location)
    uri = str(log_cfg.tracking_uri)
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
    return None


def build_mlflow_logger(cfg: DictConfig) -> RunLogger:
    """An MLFlowLogger for this run, tagged with arm, seed and dataset, holding the resolved config."""
    log_cfg = cfg.logger
    check_tracking_uri(str(log_cfg.tracking_uri))
    tags = {
        "arm": str(cfg.arm),
        "seed": str(cfg.seed),
        "dataset": str(cfg.dataset.name),
        "stage": str(cfg.stage),
    }
    tags.update({str(k): str(v) for k, v in (log_cfg.get("tags") or {}).items()})
    logger = RunLogger(
        experiment_name=str(log_cfg.experiment_name),
        tracking_uri=str(log_cfg.tracking_uri),
        run_name=str(log_cfg.run_name),
        tags=tags,
        log_model=False,
        artifact_location=artifact_location(log_cfg),
    )
    params = {k: v for k, v in flatten(plain_dict(cfg)).items() if not k.startswith("hydra")}
    logger.log_hyperparams({k: str(v)[:500] for k, v in params.items()})
    log_text(logger, OmegaConf.to_yaml(cfg, resolve=True), "config/run.yaml")
    return logger


def log_text(logger: MLFlowLogger, text: str, artifact_file: str) -> None:
    logger.experiment.log_text(logger.run_id, text, artifact_file)


def log_json(logger: MLFlowLogger, obj: Any, artifact_file: str) -> None:
    log_text(logger, json.dumps(obj, indent=1, sort_keys=True, default=str), artifact_file)


def log_file(logger: MLFlowLogger, path: str | Path, artifact_path: str | None = None) -> None:
    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def log_metrics(logger: MLFlowLogger, metrics: dict[str, float], step: int | None = None) -> None:
    logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


@contextmanager
def terminal_status(logger: MLFlowLogger) -> Iterator[None]:
    """Mark the run FINISHED on success, KILLED on KeyboardInterrupt/SystemExit, FAILED on any other error."""
    try:
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
