"""stage=generate with ``generation=grounded``: build the grounded pipeline's inputs from the config, run it.

Kept apart from :mod:`causalneg.stages.generate` (which owns the artifact, its reuse and publication) so that the
grounded method's settings are read from ``cfg.generation`` in one place.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from causalneg.generation.artifact import backend_signature, generation_query_ids, generation_split
from causalneg.generation.backends.base import GenerationBackend, SamplingConfig
from causalneg.generation.grounded.inputs import build_items, document_frequency
from causalneg.generation.grounded.pipeline import GroundedSettings, Similarity, run_grounded
from causalneg.generation.grounded.verify import VerifyConfig
from causalneg.generation.pipeline import PipelineResult
from causalneg.generation.prompting import resolve_profile
from causalneg.generation.store import RequestStore
from causalneg.records import RetrievalDataset


def _plain(node: Any) -> dict[str, Any]:
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items()}


def grounded_settings(cfg: DictConfig) -> GroundedSettings:
    gen = cfg.generation
    return GroundedSettings(
        num_negatives=int(gen.num_negatives),
        min_kept=int(gen.get("min_kept", 2)),
        fallback_spans=int(gen.get("fallback_spans", 2)),
        max_spans=int(gen.max_spans),
        max_sentences=int(gen.max_sentences),
        min_overlap=float(gen.min_overlap),
        max_retries=int(gen.max_retries),
        temperature_step=float(gen.temperature_step),
        max_temperature=float(gen.max_temperature),
        seed=int(gen.seed),
        source=str(gen.source),
        backend_signature=backend_signature(gen),
        use_spacy=bool(gen.get("use_spacy", True)),
        progress=bool(gen.get("progress", True)),
        sampling={s: SamplingConfig(**_plain(gen[s])) for s in ("decompose", "substitute") if gen.get(s)},
        verify=VerifyConfig(**_plain(gen.verify)),
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


def run_grounded_stage(
    cfg: DictConfig, dataset: RetrievalDataset, backend: GenerationBackend, store: RequestStore
) -> PipelineResult:
    profile = resolve_profile(cfg.generation.get("profile"), dataset.name)
    items = build_items(dataset, generation_split(cfg), generation_query_ids(cfg, dataset), profile)
    result = run_grounded(
        items, backend, store, grounded_settings(cfg), build_similarity(cfg), document_frequency(dataset)
    )
    result.counts["this_run"] = {**store.fresh, "journal": str(store.path)}
    return result
