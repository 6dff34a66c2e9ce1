"""The generated-negatives artifact: ``${paths.artifacts_dir}/<dataset>/generated/<method>-<fingerprint[:12]>/``.

Files (written complete or not at all: a temporary sibling folder renamed into place)::

    rows.jsonl            {"query_id", "positive_id", "negatives": [{"text", "source": "generated" | "naive_generated",
                           "node_id", "strategy_id", "strategy_type", "origin", "break_explanation",  (causalneg only)
                           "request_key", "attempt", "seed", "temperature"}]}  one row per selected query
    rejected.jsonl        {"query_id", "positive_id", "stage", "attempt", "request_key", "reason", "detail",
                           "text"/"item" (negative-level), "raw" (the request's raw output)}
    decompositions.jsonl  {"query_id", "request_key", "attempt", "decomposition": {...}}  (causalneg only)
    manifest.json         fingerprint, inputs, config and counts (validity rate, rejections per reason, tokens/s)

``origin`` is the model's own ``source`` field (rewritten_candidate | generated_from_scratch), renamed so that
``source`` is always the :class:`~causalneg.records.NegativeSource` name.

**Fingerprint** = hash of (dataset name and fingerprint, split, selected query ids, the mined artifact's
fingerprint when candidates are shown, template version, schema hashes, generator model id, and the
``generation`` config without the keys that do not change results: ``preview``, ``flush_every``,
``progress`` and the backend's throughput options in :data:`THROUGHPUT_KEYS`), plus the encoder config when
the similarity filter is on. It is computed from a :class:`GenerationSpec`, the training
:class:`~causalneg.data.selection.Selection` and the candidates' mined fingerprint alone, all built once by the
stages (:func:`causalneg.stages.specs.generation_plan`): no model is loaded or prepared, no config is read here.

The request journal (:mod:`causalneg.generation.store`) lives beside the artifacts, one per (dataset, model):
``<dataset>/generated/journal/<model>.jsonl``; requests are content-addressed, so artifacts that differ only
in their selection or filters share every finished request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalneg.artifacts import ROWS_FILE, Manifest, fingerprint, query_rows
from causalneg.data.readers import check_string
from causalneg.data.selection import Selection
from causalneg.errors import ConfigError, DataError
from causalneg.generation.generator_models import BUILTIN_GENERATORS
from causalneg.generation.prompting import template_version
from causalneg.generation.schemas import Decomposition, naive_schema, perturbation_schema, schema_hash
from causalneg.records import Negative, NegativeSource, RetrievalDataset

KIND = "generated"
# shard (job arrays) and ray (Ray Data driver) change where requests run, never what they return
RUNTIME_KEYS = ("preview", "flush_every", "progress", "shard", "ray")
THROUGHPUT_KEYS = frozenset(
    {
        # transformers
        "batch_size", "device",
        # vllm (VLLMOptions and engine_kwargs)
        "tensor_parallel_size", "pipeline_parallel_size", "enforce_eager", "kv_cache_space_gib", "max_num_seqs",
        "chunked_prefill", "max_num_batched_tokens", "use_tqdm", "gpu_memory_utilization", "swap_space",
        "distributed_executor_backend",
        # openai (OpenAIOptions)
        "api_key", "api_key_env", "concurrency", "timeout_s", "connect_timeout_s", "max_retries",
        "backoff_base_s", "backoff_max_s",
        # llamacpp (LlamaCppBackend): n_ctx stays in (a longer prompt fails), and so does the grammar; parallel
        # changes outputs numerically (batched matrix products, llguidance masks), as vllm's max_num_seqs does;
        # prefix_states only changes which earlier call's KV a prompt's prefix is read from; masks (llguidance
        # or llama.cpp's sampler) changes the allowed tokenisations of forced strings, as parallel's path does
        "n_threads", "n_batch", "verbose", "parallel", "prefix_states", "masks",
    }
)  # fmt: skip


@dataclass(frozen=True)
class GenerationSpec:
    """One generation run: the resolved ``generation`` settings (``model`` and ``backend`` included), the split
    it reads, the encoder config (similarity filter, grounded margin check) and the artifacts folder."""

    settings: Mapping[str, Any]
    split: str
    artifacts_dir: Path
    encoder: Mapping[str, Any] | None = None

    @property
    def method(self) -> str:
        return str(self.settings.get("method", "causalneg"))

    @property
    def model_id(self) -> str:
        return generator_model_id(self.settings.get("model"))

    @property
    def num_candidates(self) -> int:
        return int(self.settings.get("num_candidates") or 0)


def _drop(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _drop(v, keys) for k, v in value.items() if k not in keys}
    return value


def generator_model_id(model_cfg: Any) -> str:
    """The generator's id in cache keys, without preparing it (builtin id, resolved local folder or hub id)."""
    model = model_cfg or {}
    location = str(model.get("path") or model.get("name") or "")
    if location in BUILTIN_GENERATORS:
        return BUILTIN_GENERATORS[location].model_id
    if not location or location == "hf":
        raise ConfigError(
            "generation.model.path must name a local HF folder or a hub id (generation/model=hf)"
        )
    folder = Path(location).expanduser()
    return str(folder.resolve()) if folder.is_dir() or folder.is_file() else location


def backend_signature(generation: Mapping[str, Any]) -> str:
    """Backend name and the options that change outputs (throughput options and the class path removed: the
    ``name`` identifies the backend), as a short hash."""
    backend = _drop(dict(generation.get("backend") or {}), THROUGHPUT_KEYS | {"_target_"})
    return f"{backend.get('name', '?')}-{fingerprint(backend)[:12]}"


def schema_hashes(num_negatives: int) -> dict[str, str]:
    return {
        "decompose": schema_hash(Decomposition),
        "perturb": schema_hash(perturbation_schema(num_negatives)),
        "naive": schema_hash(naive_schema(num_negatives)),
    }


def _prompt_and_schema_versions(generation: dict[str, Any]) -> dict[str, Any]:
    if generation.get("method") == "grounded":
        from causalneg.generation.grounded.schemas import schema_family_hash
        from causalneg.generation.grounded.spans import extractor_version

        return {
            "template_version": template_version("grounded"),
            "schemas": {"grounded": schema_family_hash()},
            "span_extractor": extractor_version(),
        }
    return {
        "template_version": template_version(),
        "schemas": schema_hashes(int(generation.get("num_negatives", 3))),
    }


def generation_manifest(
    spec: GenerationSpec, dataset: RetrievalDataset, selection: Selection, mined: str | None = None
) -> Manifest:
    """The manifest (without counts) identifying this generation run over ``selection``; ``mined`` is the
    fingerprint of the mined artifact whose candidates the prompts show. Cheap: no model, no mining."""
    generation = dict(spec.settings)
    config = {k: v for k, v in generation.items() if k not in RUNTIME_KEYS and k not in ("model", "backend")}
    inputs: dict[str, Any] = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "split": spec.split,
        "query_ids": selection.fingerprint,
        **_prompt_and_schema_versions(generation),
        "model_id": spec.model_id,
        "backend": backend_signature(generation),
    }
    if mined is not None:
        inputs["mined"] = mined
    if (generation.get("filters") or {}).get("max_positive_similarity") is not None or (
        spec.method == "grounded" and (generation.get("verify") or {}).get("relative_margin") is not None
    ):
        inputs["encoder"] = None if spec.encoder is None else dict(spec.encoder)
    return Manifest.build(KIND, inputs, config)


def generated_artifact_dir(spec: GenerationSpec, dataset: RetrievalDataset, manifest: Manifest) -> Path:
    """Where the generated artifact with ``manifest`` lives (complete or not)."""
    return spec.artifacts_dir / dataset.name / KIND / f"{spec.method}-{manifest.fingerprint[:12]}"


def journal_path(spec: GenerationSpec, dataset: RetrievalDataset) -> Path:
    model_id = spec.model_id
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.strip("/"))[-60:]
    name = f"{slug}-{fingerprint(model_id)[:8]}.jsonl"
    return spec.artifacts_dir / dataset.name / KIND / "journal" / name


def load_generated(directory: str | Path) -> dict[str, list[Negative]]:
    """``{query_id: [Negative(text, source, meta=provenance), ...]}`` from a complete artifact folder."""
    path = Path(directory) / ROWS_FILE
    generated: dict[str, list[Negative]] = {}
    for line, qid, items, row in query_rows(directory, "generated negatives (rows.jsonl)", "negatives"):
        negatives = []
        for item in items:
            if not isinstance(item, dict):
                raise DataError("expected an object", path=path, line=line, field="negatives")
            text = check_string(item.get("text"), path, line, "negatives.text", allow_empty=False)
            try:
                source = NegativeSource.parse(item.get("source", "generated"))
            except ValueError as err:
                raise DataError(str(err), path=path, line=line, field="negatives.source") from None
            meta = {k: v for k, v in item.items() if k not in ("text", "source")}
            meta["positive_id"] = row.get("positive_id")
            negatives.append(Negative(text=text, source=source, meta=meta))
        generated[qid] = negatives
    return generated
