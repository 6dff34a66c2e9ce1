"""stage=generate with ``generation=grounded``: build the grounded pipeline's inputs from the config, run it.

Kept apart from :mod:`causalneg.stages.generate` (which owns the artifact, its reuse and publication) so that the
grounded method's settings are read from ``cfg.generation`` in one place. :func:`generate_grounded` runs it as one
job, as a job-array shard (``generation.shard=i/n``: its slice of the queries, its own journal) or as the merge
(``generation.shard=merge/n``: a replay of the shard journals), as :mod:`causalneg.generation.sharding` describes.
With ``generation.ray.enabled=true`` Ray Data workers generate and this process replays, as for the official
methods (:func:`causalneg.generation.ray_driver.generate_grounded_on_ray`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from causalneg.config import plain_dict
from causalneg.errors import ConfigError
from causalneg.generation.artifact import journal_path
from causalneg.generation.backends.base import GenerationBackend
from causalneg.generation.grounded.inputs import bm25_neighbours, build_items, document_frequency
from causalneg.generation.grounded.pipeline import GroundedItem, GroundedSettings, Similarity, run_grounded
from causalneg.generation.grounded.verify import VerifyConfig
from causalneg.generation.pipeline import PipelineResult
from causalneg.generation.prompting import resolve_profile
from causalneg.generation.ray_driver import RayOptions, generate_grounded_on_ray
from causalneg.generation.sharding import (
    ReplayOnlyBackend,
    ShardSpec,
    backend_key_signature,
    fold_shard_journals,
    grounded_replay,
    grounded_replay_backend,
    shard_items,
    shard_journal,
)
from causalneg.generation.store import RequestStore
from causalneg.records import RetrievalDataset
from causalneg.stages.specs import GenerationPlan, generation_plan


def grounded_settings(cfg: DictConfig) -> GroundedSettings:
    from causalneg.stages.generate import request_settings

    gen = cfg.generation
    return GroundedSettings(
        min_kept=int(gen.get("min_kept", 2)),
        fallback_spans=int(gen.get("fallback_spans", 2)),
        max_spans=int(gen.max_spans),
        max_sentences=int(gen.max_sentences),
        min_overlap=float(gen.min_overlap),
        use_spacy=bool(gen.get("use_spacy", True)),
        corpus_substitutes=int((gen.get("corpus_substitutes") or {}).get("tries", 0)),
        verify=VerifyConfig(**plain_dict(gen.verify)),
        **request_settings(gen, ("decompose", "substitute")),
    )


def build_similarity(cfg: DictConfig) -> Similarity | None:
    """``cos(q, passage)`` under ``cfg.model`` (query side for the query, document side for passages)."""
    if cfg.generation.verify.get("relative_margin") is None or cfg.get("model") is None:
        return None
    from causalneg.stages.common import build_encoder

    encoder = build_encoder(cfg).eval()

    def similarity(query: str, passages: list[str]) -> list[float]:
        with torch.inference_mode():
            q = encoder.encode(**encoder.tokenize([query], "query"), side="query").float()
            d = encoder.encode(**encoder.tokenize(passages, "doc"), side="doc").float()
        q = torch.nn.functional.normalize(q, dim=-1)
        d = torch.nn.functional.normalize(d, dim=-1)
        return (d @ q[0]).tolist()

    return similarity


def grounded_worker_parts(
    resolved: dict[str, Any],
) -> tuple[GroundedSettings, Similarity | None, Callable[[str], float], GenerationBackend]:
    """A Ray worker's settings, similarity, document frequencies and backend, from the resolved config."""
    from causalneg.generation.backends.factory import build_backend
    from causalneg.stages.specs import load_dataset

    cfg = OmegaConf.create(resolved)
    frequencies = document_frequency(load_dataset(cfg))
    return (
        grounded_settings(cfg),
        build_similarity(cfg),
        frequencies,
        build_backend(plain_dict(cfg.generation)),
    )


def _items(plan: GenerationPlan, dataset: RetrievalDataset, spec: ShardSpec | None) -> list[GroundedItem]:
    """The selected queries' items (a shard ``spec``: its contiguous slice of them)."""
    profile = resolve_profile(plan.spec.settings.get("profile"), dataset.name)
    query_ids = list(plan.selection.query_ids)
    siblings = plan.spec.settings.get("corpus_substitutes") or {}
    count = int(siblings.get("neighbours", 0)) if int(siblings.get("tries", 0)) > 0 else 0
    neighbours = bm25_neighbours(dataset, plan.spec.split, query_ids, count)
    items = build_items(dataset, plan.spec.split, query_ids, profile, neighbours)
    return shard_items(items, spec) if spec is not None and not spec.is_merge else items


def run_grounded_stage(
    cfg: DictConfig,
    dataset: RetrievalDataset,
    backend: GenerationBackend,
    store: RequestStore,
    spec: ShardSpec | None = None,
    plan: GenerationPlan | None = None,
) -> PipelineResult:
    """The grounded pipeline over the selected queries (a shard ``spec``: its contiguous slice of them)."""
    result = run_grounded(
        _items(plan or generation_plan(cfg, dataset), dataset, spec),
        backend,
        store,
        grounded_settings(cfg),
        build_similarity(cfg),
        document_frequency(dataset),
    )
    result.counts["this_run"] = {**store.fresh, "journal": str(store.path)}
    return result


def generate_grounded(
    cfg: DictConfig, dataset: RetrievalDataset, plan: GenerationPlan, spec: ShardSpec | None
) -> tuple[PipelineResult, dict[str, Any]]:
    """One job, shard ``spec`` or the merge of ``spec.count`` shards into ``plan``'s artifact; returns the result
    and the generating backend's key signature (for the shard receipt).

    The merge replays every request from the shard journals; one that none holds fails it with a ``ConfigError``.
    """
    directory, fingerprint = plan.directory, plan.manifest.fingerprint
    journal = journal_path(plan.spec, dataset)
    ray_options = RayOptions.from_dict(plain_dict(cfg.generation.get("ray")))
    backend: GenerationBackend
    if spec is not None and spec.is_merge:
        fold_shard_journals(directory, journal, spec, fingerprint)
        backend = grounded_replay_backend(directory, spec)
    elif ray_options.enabled:  # Ray Data workers journal every request; this process replays them
        journal = journal if spec is None else shard_journal(journal, spec)
        stats, signature = generate_grounded_on_ray(
            plain_dict(cfg), _items(plan, dataset, spec), journal, ray_options
        )
        print(f"[generate] ray: {stats}")
        backend = grounded_replay(None, signature or {"model_id": "", "scores": False})
    else:
        from causalneg.generation.backends.factory import build_backend

        journal = journal if spec is None else shard_journal(journal, spec)
        backend = build_backend(plan.spec.settings)
    signature = backend_key_signature(backend)
    try:
        result = run_grounded_stage(cfg, dataset, backend, RequestStore(journal), spec, plan)
    except Exception as err:  # a miss surfaces as the judge's or the pipeline's own error: name it
        if isinstance(backend, ReplayOnlyBackend) and backend.missing:
            raise ConfigError(backend.message()) from err
        raise
    finally:
        backend.close()
    if isinstance(backend, ReplayOnlyBackend) and backend.missing:
        raise ConfigError(backend.message())
    return result, signature
