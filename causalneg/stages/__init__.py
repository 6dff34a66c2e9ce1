"""Stages: orchestration only. Each module exposes ``run(cfg) -> dict``; ``dispatch`` picks one by ``cfg.stage``."""

from __future__ import annotations

import importlib
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from causalneg.config import check_required, resolve_precisions
from causalneg.errors import CausalNegError, ConfigError

STAGES = ("train", "evaluate", "mine", "generate", "diagnose", "compare")


def dispatch(cfg: DictConfig) -> dict[str, Any]:
    stage = str(cfg.get("stage", "train"))
    if stage not in STAGES:
        raise ConfigError(f"unknown stage={stage!r}; choose one of: {', '.join(STAGES)}")
    check_required(cfg)
    resolve_precisions(
        cfg
    )  # precision: auto -> what this machine computes natively (logged params, fingerprints)
    module = importlib.import_module(f"causalneg.stages.{stage}")
    try:
        result: dict[str, Any] = module.run(cfg)
    except InstantiationException as exc:
        # Hydra wraps what a `_target_` raises (e.g. a dataset loader's DataError): surface our own errors as-is.
        if isinstance(exc.__cause__, CausalNegError):
            raise exc.__cause__ from None
        raise
    return result
