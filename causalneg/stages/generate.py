"""stage=generate: LLM negatives for the selected training queries (CausalNeg, naive or grounded), as an artifact.

``python run.py stage=generate [generation=naive] [generation/backend=vllm] [generation/model=qwen_coder_1_5b]``;
``generation.preview=true`` prints the rendered prompts of the first selected query and exits. Run it in its
own process (vLLM does not free memory in-process): training's ``prepare_data`` hands it a written config
(:mod:`causalneg.stages.handoff`). What it generates for is :func:`causalneg.stages.specs.generation_plan`.
Finished requests are journaled, so an interrupted run resumes where it stopped. SIGTERM (a scheduler, ``kill``,
a parent stopping its child) raises ``SystemExit(143)`` while the backend is alive, so ``backend.close()`` runs
and shuts the engine's processes down (vLLM's EngineCore would otherwise outlive this process).

With ``generation.filters.length_from_corpus`` the filters' length band is computed here, once, from the corpus
(:func:`filter_config`), and recorded in the manifest as ``config.filters.corpus_chars``. It is not part of the
fingerprint: it is a function of the dataset (an input) and ``length_quantiles`` (config).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from causalneg.artifacts import Manifest, publish, reusable, write_artifact, write_jsonl_atomic
from causalneg.config import plain_dict
from causalneg.errors import ConfigError
from causalneg.generation.artifact import backend_signature, journal_path
from causalneg.generation.backends.base import GenerationBackend, SamplingConfig
from causalneg.generation.filters import Embedder, FilterConfig, corpus_length_band
from causalneg.generation.pipeline import PipelineResult, PipelineSettings, run_pipeline
from causalneg.generation.prompting import PromptInputs, clip, preview, render_messages, resolve_profile
from causalneg.generation.ray_driver import RayOptions, generate_on_ray
from causalneg.generation.sharding import (
    ReplayOnlyBackend,
    backend_key_signature,
    fold_shard_journals,
    parse_shard,
    shard_items,
    shard_journal,
    write_receipt,
)
from causalneg.generation.store import RequestStore
from causalneg.records import RetrievalDataset
from causalneg.stages.common import apply_runtime, load_dataset
from causalneg.stages.specs import GenerationPlan, generation_plan, run_spec

STAGES = ("decompose", "perturb", "naive")


def build_inputs(
    plan: GenerationPlan, dataset: RetrievalDataset, limit: int | None = None, candidates: bool = True
) -> list[PromptInputs]:
    """One :class:`PromptInputs` per selected query: its first positive and up to ``num_candidates`` mined ones
    (mining the split first if its artifact is missing)."""
    gen = plan.spec.settings
    split = dataset.split(plan.spec.split)
    query_ids = list(plan.selection.query_ids)[:limit]
    mined: dict[str, list[tuple[str, float]]] = {}
    if candidates and plan.candidates is not None:
        from causalneg.data.mining.artifact import ensure_mined, load_mined

        mined = load_mined(ensure_mined(plan.candidates.spec, dataset, plan.candidates.selection))
    profile = resolve_profile(gen.get("profile"), dataset.name)
    max_chars, k = int(gen["max_passage_chars"]), plan.spec.num_candidates
    items = []
    for qid in query_ids:
        in_corpus = [pid for pid in split.positives(qid) if pid in dataset.corpus]
        if not in_corpus:  # all positives missing from the corpus (dataset.missing_documents=warn-and-keep)
            continue
        positive_id = in_corpus[0]
        shown = [clip(dataset.corpus[pid].full_text, max_chars) for pid, _ in mined.get(qid, [])[:k]]
        items.append(
            PromptInputs(
                query_id=qid,
                query=split.queries[qid].text,
                positive_id=positive_id,
                positive=clip(dataset.corpus[positive_id].full_text, max_chars),
                candidates=tuple(shown),
                answers=tuple(dataset.answers.get(qid, [])),
                profile=profile,
            )
        )
    return items


def request_settings(gen: DictConfig, stages: tuple[str, ...]) -> dict[str, Any]:
    """The settings every generation method reads alike: retries, seeds, source, backend signature, per-stage
    sampling (for ``stages``) and progress."""
    return {
        "num_negatives": int(gen.num_negatives),
        "max_retries": int(gen.max_retries),
        "temperature_step": float(gen.temperature_step),
        "max_temperature": float(gen.max_temperature),
        "seed": int(gen.seed),
        "source": str(gen.source),
        "backend_signature": backend_signature(plain_dict(gen)),
        "progress": bool(gen.get("progress", True)),
        "sampling": {s: SamplingConfig(**plain_dict(gen[s])) for s in stages if gen.get(s)},
    }


def pipeline_settings(cfg: DictConfig) -> PipelineSettings:
    gen = cfg.generation
    return PipelineSettings(
        method=str(gen.method), flush_every=int(gen.get("flush_every", 16)), **request_settings(gen, STAGES)
    )


def filter_config(cfg: DictConfig, dataset: RetrievalDataset | None = None) -> FilterConfig:
    """``generation.filters`` as a :class:`FilterConfig`; with ``length_from_corpus``, ``corpus_chars`` is set to
    the ``length_quantiles`` of ``dataset``'s passage lengths (``Passage.full_text``, in characters)."""
    options = plain_dict(cfg.generation.get("filters"))
    if options.get("length_from_corpus"):
        if dataset is None:
            raise ConfigError(
                "generation.filters.length_from_corpus=true needs the dataset: call filter_config(cfg, dataset)"
            )
        quantiles = tuple(options.get("length_quantiles") or FilterConfig.length_quantiles)
        lengths = [len(passage.full_text) for passage in dataset.corpus.values()]
        options["corpus_chars"] = corpus_length_band(lengths, (float(quantiles[0]), float(quantiles[1])))
    return FilterConfig(**options)


def build_embedder(cfg: DictConfig, filters: FilterConfig) -> Embedder | None:
    """Document-side embeddings of ``cfg.model`` for the similarity filter (None when the filter is off)."""
    if filters.max_positive_similarity is None or cfg.get("model") is None:
        return None
    from causalneg.stages.common import build_encoder

    encoder = build_encoder(cfg).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return encoder.encode(**encoder.tokenize(texts, "doc"), side="doc")

    return embed


def worker_parts(
    resolved: dict[str, Any], filters: FilterConfig
) -> tuple[PipelineSettings, Embedder | None, GenerationBackend]:
    """A Ray worker's settings, embedder and backend, from the resolved config it was sent."""
    from causalneg.generation.backends.factory import build_backend

    cfg = OmegaConf.create(resolved)
    return pipeline_settings(cfg), build_embedder(cfg, filters), build_backend(plain_dict(cfg.generation))


def preview_prompts(cfg: DictConfig, dataset: RetrievalDataset) -> str:
    """The rendered prompts of the first selected query (perturb: only once its decomposition is journaled)."""
    items = build_inputs(
        generation_plan(cfg, dataset), dataset, limit=1, candidates=False
    )  # neither prompt shown here lists candidates
    if not items:
        return "no selected query"
    method, n = str(cfg.generation.method), int(cfg.generation.num_negatives)
    if method == "naive":
        return preview(render_messages("naive", items[0], n), f"naive prompt for query {items[0].query_id}")
    text = preview(
        render_messages("decompose", items[0], n), f"decompose prompt for query {items[0].query_id}"
    )
    return (
        text + "\n(the perturb prompt shows this query's decomposition once stage=generate has produced it)"
    )


def write_files(tmp: Path, result: PipelineResult, manifest: Manifest) -> None:
    """The artifact's files in ``tmp`` (the manifest last), for :func:`causalneg.artifacts.publish`."""
    write_jsonl_atomic(tmp / "rejected.jsonl", result.rejected)
    write_jsonl_atomic(tmp / "decompositions.jsonl", result.decompositions)
    write_artifact(tmp, result.rows, manifest)


def log_to_mlflow(cfg: DictConfig, manifest: Manifest, result: PipelineResult) -> None:
    """Params, metrics (gen/...), the manifest and a sample table of kept and rejected rows."""
    if not OmegaConf.select(cfg, "logger.tracking_uri", default=None):
        return
    from causalneg.tracking.runs import build_mlflow_logger, log_json, log_metrics, terminal_status

    logger = build_mlflow_logger(run_spec(cfg))
    with terminal_status(logger):
        counts = manifest.counts
        metrics = {
            f"gen/{k}": float(counts[k]) for k in ("validity_rate", "kept_rate", "negatives_kept", "requests")
        }
        if counts.get("tokens_per_s"):
            metrics["gen/tokens_per_s"] = float(counts["tokens_per_s"])
        metrics.update({f"gen/rejections/{r}": float(n) for r, n in counts["rejections"].items()})
        log_metrics(logger, metrics)
        log_json(logger, asdict(manifest), "generation/manifest.json")
        kept = [(r["query_id"], "kept", "", n["text"]) for r in result.rows for n in r["negatives"]][:50]
        rejected = [
            (r["query_id"], "rejected", r["reason"], r.get("text") or r.get("raw", ""))
            for r in result.rejected
        ][:50]
        samples = kept + rejected
        table = {
            "query_id": [s[0] for s in samples],
            "status": [s[1] for s in samples],
            "reason": [s[2] for s in samples],
            "text": [str(s[3])[:500] for s in samples],
        }
        logger.experiment.log_table(logger.run_id, data=table, artifact_file="generation/samples.json")


def backend_failures(manifest: Manifest) -> int:
    """Outputs rejected as ``backend_error`` (the request never produced text) in this artifact's run."""
    return int((manifest.counts.get("rejections") or {}).get("backend_error", 0))


def summarize(directory: Path, manifest: Manifest, reused: bool) -> dict[str, Any]:
    counts = manifest.counts
    summary = {"artifact": str(directory), "reused": reused, **counts}
    print(f"[generate] artifact: {directory}{' (reused)' if reused else ''}")
    print(
        f"[generate] queries {counts.get('queries')} (with negatives {counts.get('queries_with_negatives')}), "
        f"requests {counts.get('requests')}, validity rate {counts.get('validity_rate')}, "
        f"kept {counts.get('negatives_kept')} (kept rate {counts.get('kept_rate')}), "
        f"tokens/s {counts.get('tokens_per_s')}, wall {counts.get('wall_seconds')} s"
    )
    print(f"[generate] rejections: {counts.get('rejections')}")
    if backend_failures(manifest):
        print(
            f"[generate] {backend_failures(manifest)} request(s) failed at the backend (see rejected.jsonl, "
            "reason backend_error); run the same command again to retry them (finished requests are reused)"
        )
    return summary


def run(cfg: DictConfig) -> dict[str, Any]:
    apply_runtime(cfg)
    dataset = load_dataset(cfg)
    if cfg.generation.get("preview"):
        text = preview_prompts(cfg, dataset)
        print(text)
        return {"preview": text}
    plan = generation_plan(cfg, dataset)
    directory, manifest = plan.directory, plan.manifest
    # An artifact whose requests partly failed at the backend (timeouts, HTTP 5xx: not journaled) is not
    # final: running the stage again retries exactly those requests and reuses every journaled one.
    existing = reusable(directory, manifest.fingerprint, accept=lambda m: not backend_failures(m))
    if existing is not None:
        return summarize(directory, existing, reused=True)
    started = time.perf_counter()
    from causalneg.generation.backends.factory import build_backend
    from causalneg.tracking.runs import sigterm_exits

    # SIGTERM -> SystemExit while a backend may be alive: each `finally: backend.close()` below runs.
    spec = parse_shard(cfg.generation.get("shard"))  # job arrays: generation.shard=i/n, then merge/n
    with sigterm_exits():
        if str(cfg.generation.method) == "grounded":
            from causalneg.stages.generate_grounded import generate_grounded

            result, signature = generate_grounded(cfg, dataset, plan, spec)
            store_fresh: dict[str, Any] = {}
        else:
            items = build_inputs(plan, dataset)
            filters = filter_config(cfg, dataset)
            if filters.corpus_chars is not None:  # derived from the dataset: recorded, not fingerprinted
                manifest.config["filters"] = {
                    **(manifest.config.get("filters") or {}),
                    "corpus_chars": list(filters.corpus_chars),
                }
            embed = build_embedder(cfg, filters)
            journal = journal_path(plan.spec, dataset)
            backend: GenerationBackend
            if spec is not None and spec.is_merge:  # every request is in a shard journal: replay them
                fold_shard_journals(directory, journal, spec, manifest.fingerprint)
                backend = ReplayOnlyBackend(spec, plan.spec.model_id)
            else:
                if spec is not None:
                    items, journal = shard_items(items, spec), shard_journal(journal, spec)
                ray_options = RayOptions.from_dict(plain_dict(cfg.generation.get("ray")))
                if ray_options.enabled:  # Ray Data workers journal every request; this process replays
                    resolved = plain_dict(cfg)
                    print(
                        f"[generate] ray: {generate_on_ray(resolved, items, filters, journal, ray_options)}"
                    )
                    backend = ReplayOnlyBackend(None, plan.spec.model_id)
                else:
                    backend = build_backend(plan.spec.settings)
            signature = backend_key_signature(backend)
            try:
                store = RequestStore(journal)
                result = run_pipeline(items, backend, store, pipeline_settings(cfg), filters, embed)
            finally:
                backend.close()
            store_fresh = {**store.fresh, "journal": str(store.path)}
    if spec is not None and not spec.is_merge:  # a shard job leaves its journal and a receipt, no artifact
        query_ids = [row["query_id"] for row in result.rows]
        receipt = write_receipt(directory, spec, manifest.fingerprint, query_ids, result.counts, signature)
        print(f"[generate] {spec.tag}: {len(query_ids)} queries journaled; receipt {receipt}")
        return {"shard": spec.tag, "receipt": str(receipt), **result.counts}
    manifest.counts = {
        **result.counts,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "this_run": store_fresh or result.counts.pop("this_run", {}),
    }
    # A complete folder published meanwhile by a concurrent run of the same config wins (same journal, same
    # rows), unless requests of it failed at the backend: this run retried them, so its result replaces it.
    publish(
        directory, lambda tmp: write_files(tmp, result, manifest), replace=lambda m: backend_failures(m) > 0
    )
    log_to_mlflow(cfg, manifest, result)
    return summarize(directory, manifest, reused=False)
