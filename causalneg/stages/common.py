"""Builders shared by stages: runtime settings, dataset, encoder, and the artifact sources of negatives."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from causalneg.artifacts import is_complete
from causalneg.config import plain_dict
from causalneg.data.datamodule import ArtifactSources
from causalneg.errors import ConfigError
from causalneg.models.encoder import DualEncoder
from causalneg.records import RetrievalDataset
from causalneg.stages.handoff import generate_in_child_process
from causalneg.stages.specs import generation_plan, load_dataset, mined_input

__all__ = ["apply_runtime", "artifact_sources", "build_encoder", "load_dataset"]


def apply_runtime(cfg: DictConfig) -> None:
    """Thread settings: torch intra-op threads (null = all cores) and tokenizer parallelism."""
    runtime = plain_dict(cfg.get("runtime") or {})
    if runtime.get("num_threads"):
        torch.set_num_threads(int(runtime["num_threads"]))
    os.environ.setdefault(
        "TOKENIZERS_PARALLELISM", "true" if runtime.get("tokenizers_parallelism") else "false"
    )


def build_encoder(cfg: DictConfig) -> DualEncoder:
    return DualEncoder.from_config(plain_dict(cfg.model), cache_dir=str(cfg.paths.cache_dir))


def artifact_sources(
    cfg: DictConfig, dataset: RetrievalDataset, encoder: DualEncoder | None
) -> ArtifactSources:
    """Mining (in-process, cheap) and generation (the explicit hand-off, :mod:`causalneg.stages.handoff`)
    providers for the DataModule, from the specs of ``cfg``."""
    from causalneg.data.mining.artifact import ensure_mined, load_mined
    from causalneg.generation.artifact import load_generated

    def mined(split: str) -> Path:
        plan = mined_input(cfg, dataset, split)
        return ensure_mined(
            plan.spec, dataset, plan.selection, encoder_factory=None if encoder is None else lambda: encoder
        )

    def ensure_generated() -> Path:
        explicit = cfg.data.get("generated_artifact")
        if explicit:  # a given folder (e.g. committed negatives generated on the full corpus): used as it is
            directory = Path(str(explicit)).expanduser()
            if not is_complete(directory):
                raise ConfigError(f"data.generated_artifact={directory} is not a complete generated artifact")
            return directory
        directory = generation_plan(cfg, dataset).directory
        if not is_complete(directory):
            if not cfg.data.auto_generate:
                raise ConfigError(
                    f"generated negatives are missing ({directory}); run `python run.py stage=generate` with the "
                    "same overrides first, or set data.auto_generate=true"
                )
            generate_in_child_process(cfg)
        if not is_complete(directory):
            raise ConfigError(f"generation finished but left no complete artifact at {directory}")
        return directory

    uses_mining = cfg.data.num_mined > 0 or cfg.data.get("mine_dev", True)
    return ArtifactSources(
        mined=mined if uses_mining and cfg.get("mining") is not None else None,
        load_mined=load_mined,
        ensure_generated=ensure_generated if cfg.data.num_generated > 0 else None,
        load_generated=load_generated,
    )
