"""Typed specs, built once from the Hydra config: the query selection, mining, generation and data settings.

This is where the config ends. Library modules take the specs below (and query ids), never a ``DictConfig``, so
the keys a library function reads are the fields of its spec.

**The selection rule** (:func:`selection`), one for every stage: ``select_query_ids(split, limit, seed)`` with
``seed = data.selection_seed`` and ``limit = data.max_train_queries`` for the dataset's training split,
``data.max_dev_queries`` for its dev split, all judged queries for any other split. Fallback: without a ``data``
group the seed is 0 and there is no limit (the :class:`~causalneg.data.datamodule.DataSettings` defaults).
Generation passes its own limit, ``generation.limit`` (when set) else ``data.max_train_queries``: a smaller
``generation.limit`` generates for a seeded sample of its own (``generation.limit == data.max_train_queries``,
as the study runs it, selects exactly the training queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from causalneg.artifacts import Manifest
from causalneg.config import flatten, plain_dict, to_container
from causalneg.data.groups import GroupSpec
from causalneg.data.mining.artifact import MiningSpec, mined_artifact_dir, mining_manifest
from causalneg.data.selection import Selection
from causalneg.errors import ConfigError
from causalneg.generation.artifact import GenerationSpec, generated_artifact_dir, generation_manifest
from causalneg.records import NegativeSource, RetrievalDataset

if TYPE_CHECKING:
    from causalneg.data.datamodule import DataSettings
    from causalneg.tracking.runs import RunSpec

RULE: Any = object()  # "the selection rule decides the limit" (module docstring)


def load_dataset(cfg: DictConfig) -> RetrievalDataset:
    """``instantiate(cfg.dataset)``, checked to be a :class:`RetrievalDataset`."""
    dataset = instantiate(cfg.dataset)
    if not isinstance(dataset, RetrievalDataset):
        raise ConfigError(f"dataset._target_ must return a RetrievalDataset, got {type(dataset).__name__}")
    return dataset


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def selection(cfg: DictConfig, dataset: RetrievalDataset, split: str, limit: int | None = RULE) -> Selection:
    """The queries of ``split`` that a run uses (the rule in the module docstring)."""
    if split not in dataset.splits:
        raise ConfigError(f"split {split!r} is not a split of '{dataset.name}' ({sorted(dataset.splits)})")
    if limit is RULE:
        limit = None
        if split == _select(cfg, "dataset.train_split"):
            limit = _select(cfg, "data.max_train_queries")
        elif split == _select(cfg, "dataset.dev_split"):
            limit = _select(cfg, "data.max_dev_queries")
    seed = int(_select(cfg, "data.selection_seed", 0))
    return Selection.of(dataset.split(split), split, None if limit is None else int(limit), seed)


def mining_spec(cfg: DictConfig, split: str) -> MiningSpec:
    """``cfg.mining`` for ``split`` (``mining.split`` is the training split; the dev split is mined alike)."""
    if cfg.get("mining") is None:
        raise ConfigError("no mining configured: choose mining=bm25 or mining=dense")
    settings = {**plain_dict(cfg.mining), "split": split}
    model = plain_dict(cfg.model) if cfg.get("model") is not None else None
    paths = cfg.paths
    return MiningSpec(settings, Path(str(paths.artifacts_dir)), Path(str(paths.cache_dir)), model)


@dataclass(frozen=True)
class MinedInput:
    """A mining spec, the selection it mines and where its artifact lives."""

    spec: MiningSpec
    selection: Selection
    manifest: Manifest
    directory: Path


def mined_input(cfg: DictConfig, dataset: RetrievalDataset, split: str) -> MinedInput:
    spec, chosen = mining_spec(cfg, split), selection(cfg, dataset, split)
    manifest = mining_manifest(spec, dataset, chosen)
    return MinedInput(spec, chosen, manifest, mined_artifact_dir(spec, dataset, manifest))


def generation_spec(cfg: DictConfig) -> GenerationSpec:
    if cfg.get("generation") is None:
        raise ConfigError("no generation configured: choose generation=causalneg|naive|grounded")
    settings = plain_dict(cfg.generation)
    split = str(settings.get("split") or cfg.dataset.train_split)
    encoder = to_container(cfg.get("model"))
    return GenerationSpec(settings, split, Path(str(cfg.paths.artifacts_dir)), encoder)


@dataclass(frozen=True)
class GenerationPlan:
    """What one generation run reads and where its artifact goes: spec, selection, the mined candidates shown to
    the prompts (``generation.num_candidates > 0`` with mining configured), manifest (no counts) and folder."""

    spec: GenerationSpec
    selection: Selection
    candidates: MinedInput | None
    manifest: Manifest
    directory: Path


def generation_plan(cfg: DictConfig, dataset: RetrievalDataset) -> GenerationPlan:
    """The :class:`GenerationPlan` of ``cfg``: cheap (no model is loaded, nothing is mined)."""
    spec = generation_spec(cfg)
    limit = spec.settings.get("limit") or _select(cfg, "data.max_train_queries")
    chosen = selection(cfg, dataset, spec.split, limit)
    candidates = None
    if spec.num_candidates > 0 and cfg.get("mining") is not None:
        candidates = mined_input(cfg, dataset, spec.split)
    mined = candidates.manifest.fingerprint if candidates is not None else None
    manifest = generation_manifest(spec, dataset, chosen, mined)
    return GenerationPlan(spec, chosen, candidates, manifest, generated_artifact_dir(spec, dataset, manifest))


def generated_source(cfg: DictConfig) -> NegativeSource:
    """The source the generated rows carry (``generation.source``; ``generated`` without a generation group)."""
    generation = cfg.get("generation")
    return (
        NegativeSource.parse(str(generation.get("source", "generated")))
        if generation
        else NegativeSource.GENERATED
    )


def data_settings(cfg: DictConfig, dataset: RetrievalDataset) -> DataSettings:
    """The ``data`` group, with the training and dev selections resolved on ``dataset``."""
    from causalneg.data.datamodule import DataSettings  # Lightning: not for stage=mine's BM25 path

    d = cfg.data
    spec = GroupSpec(
        num_mined=int(d.num_mined),
        num_generated=int(d.num_generated),
        num_random=int(d.num_random),
        generated_source=generated_source(cfg),
        mined_selection=str(d.get("mined_selection", "hardest")),
        positive_selection=str(d.get("positive_selection", "first")),
        positives=str(d.get("positives", "one")),
        max_positives=int(d.get("max_positives", 4)),
        min_grade=int(d.get("min_grade", 1)),
        min_mined=int(d.get("min_mined", 0)),
    )
    train_split, dev_split = str(cfg.dataset.train_split), cfg.dataset.get("dev_split")
    dev = selection(cfg, dataset, str(dev_split)).query_ids if dev_split else ()
    return DataSettings(
        spec=spec,
        seed=int(cfg.seed),
        batch_size=int(d.batch_size),
        eval_batch_size=int(cfg.eval.batch_size),
        num_workers=int(d.num_workers),
        train_split=train_split,
        dev_split=str(dev_split) if dev_split else None,
        train_query_ids=selection(cfg, dataset, train_split).query_ids,
        dev_query_ids=dev,
        selection_seed=int(d.selection_seed),
        diagnostics_groups=int(d.diagnostics_groups),
        dev_subcorpus_random=int(cfg.eval.dev_subcorpus_random),
    )


def run_spec(cfg: DictConfig) -> RunSpec:
    """The stage's MLflow run (``logger`` group): tagged with arm, seed, dataset and stage (and ``logger.tags``),
    every resolved config value as a flat param (Hydra's own left out), the resolved config as YAML."""
    from causalneg.tracking.runs import RunSpec  # Lightning and MLflow: not for stage=mine's BM25 path

    log = cfg.logger
    tags = {
        "arm": str(cfg.arm),
        "seed": str(cfg.seed),
        "dataset": str(cfg.dataset.name),
        "stage": str(cfg.stage),
    }
    tags.update({str(k): str(v) for k, v in plain_dict(log.get("tags")).items()})
    params = {k: v for k, v in flatten(plain_dict(cfg)).items() if not k.startswith("hydra")}
    return RunSpec(
        tracking_uri=str(log.tracking_uri),
        experiment_name=str(log.experiment_name),
        run_name=str(log.run_name),
        tags=tags,
        params=params,
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        artifact_location=str(log.artifact_location) if log.get("artifact_location") else None,
    )
