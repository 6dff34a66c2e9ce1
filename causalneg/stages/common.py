"""Builders shared by stages: runtime settings, dataset, encoder, and the artifact sources of negatives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from causalneg.artifacts import is_complete
from causalneg.config import plain_dict
from causalneg.data.datamodule import ArtifactSources
from causalneg.errors import ConfigError
from causalneg.models.encoder import DualEncoder
from causalneg.records import Negative, RetrievalDataset


def apply_runtime(cfg: DictConfig) -> None:
    """Thread settings: torch intra-op threads (null = all cores) and tokenizer parallelism."""
    runtime = plain_dict(cfg.get("runtime") or {})
    if runtime.get("num_threads"):
        torch.set_num_threads(int(runtime["num_threads"]))
    os.environ.setdefault(
        "TOKENIZERS_PARALLELISM", "true" if runtime.get("tokenizers_parallelism") else "false"
    )


def load_dataset(cfg: DictConfig) -> RetrievalDataset:
    dataset = instantiate(cfg.dataset)
    if not isinstance(dataset, RetrievalDataset):
        raise ConfigError(f"dataset._target_ must return a RetrievalDataset, got {type(dataset).__name__}")
    return dataset


def build_encoder(cfg: DictConfig) -> DualEncoder:
    return DualEncoder.from_config(plain_dict(cfg.model), cache_dir=str(cfg.paths.cache_dir))


def _with_split(cfg: DictConfig, split: str) -> DictConfig:
    copy = cfg.copy()
    with open_dict(copy):
        copy.mining.split = split
    return copy


def _job_overrides() -> list[str]:
    """This job's command-line overrides (incl. sweep values), to replay them in a child process."""
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("stage=", "hydra."))]


def _run_py_path() -> Path:
    for source in HydraConfig.get().runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path).parent / "run.py"
    raise ConfigError("cannot locate run.py from Hydra's config sources")


def generate_in_child_process(cfg: DictConfig) -> None:
    """Run ``python run.py stage=generate <this job's overrides>`` and wait; vLLM never lives in this process."""
    if not HydraConfig.initialized():
        raise ConfigError(
            "the generated-negatives artifact is missing; run `python run.py stage=generate ...` first"
        )
    command = [sys.executable, str(_run_py_path()), "stage=generate", *_job_overrides()]
    print(f"[causalneg] generating negatives in a child process: {' '.join(command)}", flush=True)
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise ConfigError(
            f"generation child process failed with exit code {completed.returncode}: {' '.join(command)}"
        )


def artifact_sources(
    cfg: DictConfig, dataset: RetrievalDataset, encoder: DualEncoder | None
) -> ArtifactSources:
    """Mining (in-process, cheap) and generation (child process) providers for the DataModule."""
    from causalneg.data.mining.artifact import ensure_mined, load_mined

    def mined(split: str) -> Path:
        return ensure_mined(_with_split(cfg, split), dataset, encoder=encoder)

    def ensure_generated() -> Path:
        from causalneg.generation.artifact import generated_artifact_dir

        explicit = cfg.data.get("generated_artifact")
        if explicit:  # a given folder (e.g. committed negatives generated on the full corpus): used as it is
            directory = Path(str(explicit)).expanduser()
            if not is_complete(directory):
                raise ConfigError(f"data.generated_artifact={directory} is not a complete generated artifact")
            return directory
        directory = generated_artifact_dir(cfg, dataset)
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

    def load_generated(directory: Path) -> dict[str, list[Negative]]:
        from causalneg.generation.artifact import load_generated as load

        return load(directory)

    uses_mining = cfg.data.num_mined > 0 or cfg.data.get("mine_dev", True)
    return ArtifactSources(
        mined=mined if uses_mining and cfg.get("mining") is not None else None,
        load_mined=load_mined,
        ensure_generated=ensure_generated if cfg.data.num_generated > 0 else None,
        load_generated=load_generated,
    )


def resolved(cfg: DictConfig) -> dict[str, Any]:
    return plain_dict(cfg)
