"""Stages: orchestration only. Each module exposes ``run(cfg) -> dict``; ``dispatch`` picks one by ``cfg.stage``."""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig

from causalneg.config import check_required
from causalneg.errors import ConfigError

STAGES = ("train", "evaluate", "mine", "generate", "diagnose", "compare")


def dispatch(cfg: DictConfig) -> dict[str, Any]:
    stage = str(cfg.get("stage", "train"))
    if stage not in STAGES:
        raise ConfigError(f"unknown stage={stage!r}; choose one of: {', '.join(STAGES)}")
    check_required(cfg)
    module = importlib.import_module(f"causalneg.stages.{stage}")
    result: dict[str, Any] = module.run(cfg)
    return result
