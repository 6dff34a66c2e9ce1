"""The generation pipeline: decompose -> perturb -> filter (CausalNeg, DESIGN §1a), or one naive call.

Work is batched per round: every pending (query, positive) gets one request, the backend receives the list
(vLLM batches it), outputs are validated and filtered, and the requests that failed go to the next round. A
request fails when its output is not schema-valid or when every negative in it was rejected; it is retried at
most ``max_retries`` times, each retry with a fresh seed derived from (seed, query id, stage, attempt) and a
higher temperature ``min(T0 + attempt * temperature_step, max_temperature)``; both are recorded.
Everything goes through the :class:`~causalneg.generation.store.RequestStore`, so a re-run after a crash redoes
only the unfinished requests and produces the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from causalneg.artifacts import fingerprint
from causalneg.generation.backends.base import GenerationBackend, GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.filters import (
    Embedder,
    FilterConfig,
    FilterContext,
    Verdict,
    check_negative,
    parse_output,
    positive_similarity,
)
from causalneg.generation.prompting import PromptInputs, instruction_text, render_messages, template_version
from causalneg.generation.schemas import (
    Decomposition,
    naive_schema,
    perturbation_schema,
    reference_error,
    schema_hash,
)
from causalneg.generation.store import RequestStore, derive_seed, request_key

METHODS = ("causalneg", "naive")


@dataclass(frozen=True)
class PipelineSettings:
    """How to generate. ``sampling`` maps a stage (decompose | perturb | naive) to its base sampling."""

    method: str = "causalneg"
    num_negatives: int = 3
    max_retries: int = 2
    temperature_step: float = 0.2
    max_temperature: float = 1.3
    seed: int = 0
    source: str = "generated"  # NegativeSource name written into the rows
    backend_signature: str = ""  # backend name + output-relevant options (part of the request keys)
    flush_every: int = 16
    progress: bool = True
    sampling: dict[str, SamplingConfig] = field(default_factory=dict)

    def stage_sampling(self, stage: str, attempt: int) -> SamplingConfig:
        base = self.sampling.get(stage, SamplingConfig())
        temperature = min(base.temperature + attempt * self.temperature_step, self.max_temperature)
        return replace(base, temperature=max(base.temperature, temperature))


@dataclass
class PipelineResult:
    rows: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    decompositions: list[dict[str, Any]]
    counts: dict[str, Any]


@dataclass
class _Run:
    """Mutable state of one pipeline run."""

    settings: PipelineSettings
    backend: GenerationBackend
    store: RequestStore
    filters: FilterConfig
    embed: Embedder | None
    kept: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    decompositions: dict[str, tuple[Decomposition, dict[str, Any]]] = field(default_factory=dict)
    outputs: Counter[str] = field(default_factory=Counter)  # "<stage>/total", "<stage>/valid"
    reasons: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    seconds: float = 0.0

    def requests(
        self, stage: str, attempt: int, schema: type[BaseModel], items: Sequence[PromptInputs]
    ) -> tuple[list[GenerationRequest], list[dict[str, Any]], SamplingConfig]:
        sampling = self.settings.stage_sampling(stage, attempt)
        requests, meta = [], []
        for inputs in items:
            decomposition = self.decompositions[inputs.query_id][0] if stage == "perturb" else None
            messages = render_messages(stage, inputs, self.settings.num_negatives, decomposition)
            seed = derive_seed(self.settings.seed, inputs.query_id, stage, attempt)
            key = request_key(
                template=template_version(),
                schema=schema_hash(schema),
                model=self.backend.model_id,
                backend=self.settings.backend_signature,
                sampling=asdict(sampling),
                seed=seed,
                row=inputs.query_id,
                positive=inputs.positive_id,
                stage=stage,
                attempt=attempt,
                messages=fingerprint(messages),
            )
            requests.append(GenerationRequest(key, messages, seed))
            meta.append(
                {
                    "stage": stage,
                    "query_id": inputs.query_id,
                    "attempt": attempt,
                    "model_id": self.backend.model_id,
                }
            )
        return requests, meta, sampling

    def call(
        self, stage: str, attempt: int, schema: type[BaseModel], items: Sequence[PromptInputs]
    ) -> list[RawOutput]:
        requests, meta, sampling = self.requests(stage, attempt, schema, items)
        outputs = self.store.run(
            requests,
            meta,
            self.backend,
            schema,
            sampling,
            flush_every=self.settings.flush_every,
            desc=f"{stage} (try {attempt + 1})",
            progress=self.settings.progress,
        )
        for output in outputs:
            record = self.store.records.get(output.key, {})
            self.tokens += output.output_tokens
            self.seconds += float(record.get("seconds", 0.0))
        return outputs

    def reject(
        self,
        inputs: PromptInputs,
        stage: str,
        attempt: int,
        output: RawOutput,
        verdict: Verdict,
        **extra: Any,
    ) -> None:
        assert verdict.reason is not None
        self.reasons[verdict.reason] += 1
        self.rejected.append(
            {
                "query_id": inputs.query_id,
                "positive_id": inputs.positive_id,
                "stage": stage,
                "attempt": attempt,
                "request_key": output.key,
                "reason": verdict.reason,
                "detail": verdict.detail,
                **extra,
                "raw": output.text,
            }
        )

    def validate(
        self, stage: str, attempt: int, schema: type[BaseModel], inputs: PromptInputs, output: RawOutput
    ) -> Any:
        parsed, verdict = parse_output(output, schema)
        self.outputs[f"{stage}/total"] += 1
        if parsed is None:
            self.reject(inputs, stage, attempt, output, verdict)
            return None
        self.outputs[f"{stage}/valid"] += 1
        return parsed


def _decompose(run: _Run, items: Sequence[PromptInputs]) -> None:
    pending = list(items)
    for attempt in range(run.settings.max_retries + 1):
        if not pending:
            return
        outputs = run.call("decompose", attempt, Decomposition, pending)
        for inputs, output in zip(pending, outputs, strict=True):
            parsed = run.validate("decompose", attempt, Decomposition, inputs, output)
            if parsed is not None:
                run.decompositions[inputs.query_id] = (
                    parsed,
                    {"request_key": output.key, "attempt": attempt},
                )
        pending = [i for i in pending if i.query_id not in run.decompositions]


def _negatives(run: _Run, stage: str, items: Sequence[PromptInputs]) -> None:
    """Perturb (or naive) rounds with retries; fills ``run.kept``."""
    n = run.settings.num_negatives
    schema: type[BaseModel] = perturbation_schema(n) if stage == "perturb" else naive_schema(n)
    pending = list(items)
    for attempt in range(run.settings.max_retries + 1):
        if not pending:
            return
        outputs = run.call(stage, attempt, schema, pending)
        for inputs, output in zip(pending, outputs, strict=True):
            parsed = run.validate(stage, attempt, schema, inputs, output)
            if parsed is not None:
                _filter_request(run, stage, attempt, inputs, output, parsed)
        pending = [i for i in pending if not run.kept.get(i.query_id)]


def _filter_request(
    run: _Run, stage: str, attempt: int, inputs: PromptInputs, output: RawOutput, parsed: Any
) -> None:
    messages = render_messages(
        stage, inputs, run.settings.num_negatives, run.decompositions.get(inputs.query_id, (None,))[0]
    )
    ctx = FilterContext(
        inputs.query, inputs.positive, inputs.candidates, inputs.answers, instruction_text(messages, inputs)
    )
    kept = run.kept.setdefault(inputs.query_id, [])
    fresh: list[dict[str, Any]] = []
    for item in parsed.negatives:
        verdict = Verdict()
        if stage == "perturb":
            problem = reference_error(item, run.decompositions[inputs.query_id][0])
            verdict = Verdict("invalid_reference", problem) if problem else verdict
        if verdict.kept:
            verdict = check_negative(item.text, ctx, run.filters, [k["text"] for k in kept + fresh])
        if not verdict.kept:
            run.reject(inputs, stage, attempt, output, verdict, text=item.text, item=item.model_dump())
            continue
        fresh.append(_kept_row(run, stage, attempt, output, item))
    if fresh and run.embed is not None and run.filters.max_positive_similarity is not None:
        sims = positive_similarity([f["text"] for f in fresh], inputs.positive, run.embed)
        limit = run.filters.max_positive_similarity
        for row, sim in zip(list(fresh), sims, strict=True):
            if sim >= limit:
                fresh.remove(row)
                run.reject(
                    inputs,
                    stage,
                    attempt,
                    output,
                    Verdict("similar_to_positive", f"cosine {sim:.3f}"),
                    text=row["text"],
                )
    kept.extend(fresh)


def _kept_row(run: _Run, stage: str, attempt: int, output: RawOutput, item: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"text": item.text, "source": run.settings.source}
    if stage == "perturb":
        row.update(
            node_id=item.node_id,
            strategy_id=item.strategy_id,
            strategy_type=item.strategy_type,
            origin=item.source,  # rewritten_candidate | generated_from_scratch
            break_explanation=item.break_explanation,
        )
    record = run.store.records.get(output.key, {})
    row.update(request_key=output.key, attempt=attempt, seed=record.get("seed"))
    row["temperature"] = (record.get("sampling") or {}).get("temperature")
    return row


def run_pipeline(
    items: Sequence[PromptInputs],
    backend: GenerationBackend,
    store: RequestStore,
    settings: PipelineSettings,
    filters: FilterConfig,
    embed: Embedder | None = None,
) -> PipelineResult:
    """Generate, validate and filter negatives for ``items`` (one per selected query, its first positive)."""
    if settings.method not in METHODS:
        raise ValueError(f"unknown generation method {settings.method!r}; expected one of {METHODS}")
    run = _Run(settings, backend, store, filters, embed)
    if settings.method == "causalneg":
        _decompose(run, items)
        _negatives(run, "perturb", [i for i in items if i.query_id in run.decompositions])
    else:
        _negatives(run, "naive", items)
    rows = [
        {"query_id": i.query_id, "positive_id": i.positive_id, "negatives": run.kept.get(i.query_id, [])}
        for i in items
    ]
    decompositions = [
        {"query_id": qid, **info, "decomposition": d.model_dump()}
        for qid, (d, info) in run.decompositions.items()
    ]
    return PipelineResult(rows, run.rejected, decompositions, _counts(run, rows))


def _counts(run: _Run, rows: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(v for k, v in run.outputs.items() if k.endswith("/total"))
    valid = sum(v for k, v in run.outputs.items() if k.endswith("/valid"))
    kept = sum(len(r["negatives"]) for r in rows)
    negative_rejections = sum(
        v for k, v in run.reasons.items() if k not in ("backend_error", "invalid_json", "schema_violation")
    )
    stages = sorted({k.split("/")[0] for k in run.outputs})
    return {
        "queries": len(rows),
        "queries_with_negatives": sum(1 for r in rows if r["negatives"]),
        "requests": total,
        "schema_valid": valid,
        "validity_rate": round(valid / total, 4) if total else 0.0,
        "per_stage": {
            s: {"requests": run.outputs[f"{s}/total"], "valid": run.outputs[f"{s}/valid"]} for s in stages
        },
        "negatives_kept": kept,
        "negatives_rejected": negative_rejections,
        "kept_rate": round(kept / (kept + negative_rejections), 4) if kept + negative_rejections else 0.0,
        "rejections": dict(sorted(run.reasons.items())),
        "output_tokens": run.tokens,
        "generation_seconds": round(run.seconds, 3),
        "tokens_per_s": round(run.tokens / run.seconds, 2) if run.seconds else None,
    }
