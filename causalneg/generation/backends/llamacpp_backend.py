"""The ``llamacpp`` backend: llama.cpp (``llama-cpp-python``) running the shipped GGUF files as they are, quantized.

No conversion: the builtin generators reach this backend as GGUF **files**
(:func:`causalneg.generation.generator_models.resolve_gguf`), loaded once with
``llama_cpp.Llama(model_path, n_ctx, n_threads, n_batch, logits_all=False)``. ``model_id`` is the same as the
other backends' for the same model, so request keys stay comparable.

**Prompt.** The GGUF's own chat template (``tokenizer.chat_template``) is rendered with llama-cpp-python's
``Jinja2ChatFormatter`` and tokenised exactly as ``create_chat_completion`` does (special tokens parsed, no
extra BOS), but we never let llama-cpp-python swap the template for a builtin format it guesses. Requests are
never templated twice. A GGUF without a chat template is refused.

**Constraint** (``grammar``), one per schema, built once and cached:

- ``llama_cpp``: llama.cpp's own JSON-schema grammar (``LlamaGrammar.from_json_schema`` of
  :func:`causalneg.generation.schemas.json_schema`; at most one blank between JSON tokens). Built directly, not
  through ``response_format``, which falls back silently to *any* JSON when the schema does not convert.
- ``outlines``: ``outlines.Generator(outlines.from_llamacpp(llm), JsonSchema(...), backend=outlines_backend)``
  builds the logits processor (``llguidance`` by default, with free whitespace off as in the transformers
  backend; or ``outlines_core``). We pass that processor to llama.cpp ourselves instead of calling the
  generator: outlines' ``LlamaCpp.generate`` resets the model after every call (which throws the KV cache
  prefix away, below) and returns text only (no token count, no finish reason).

Which path is faster depends on the vocabulary. On SmolLM2-135M Q4_1 (49k entries), ``n_threads=2``, pairs run
back to back in alternating order on a shared CPU (absolute numbers swing 10x with the load, the ordering did
not): ``python experiments/bench_generation.py --model smollm2 --n 4 --backends llamacpp --threads 2
--only-decompose --override generation.decompose.max_new_tokens=256 --llamacpp-option grammar=G
--llamacpp-option parallel=1`` gave ``llama_cpp`` 29-38 vs ``outlines`` 42-51 output tok/s. On
Qwen2.5-Coder-1.5B (151k entries), 6 HotpotQA queries of ``generation=grounded``: ``llama_cpp`` 6.8 tok/s
(115 s), ``outlines`` 1.6 tok/s (344 s). So ``llama_cpp`` is the default (see
``conf/generation/backend/llamacpp.yaml``): it serves the 1.5B, the generator this backend is for.

**Masks** (``masks``; ``grammar=llama_cpp``, one request at a time). llama.cpp's grammar sampler checks every
vocabulary entry at every token: on Qwen's 151k entries that cost more than the model's own decoding step
took on 2 cores. With ``masks=llguidance`` (the default) the same GBNF grammar is compiled by llguidance, as
the batched path does, and a logits processor (:class:`~.llamacpp_batched.GuidanceLogitsProcessor`, about
0.7 ms a token) sets the forbidden tokens to ``-inf`` before llama.cpp's chain samples; the language is the
same, but where the grammar forces a string (a key) only its canonical tokens are allowed. Where llguidance
is missing or cannot compile the grammar, llama.cpp's sampler masks, as with ``masks=llama_cpp``. Measured,
``python experiments/bench_llamacpp_options.py --dataset hotpotqa --queries 2 --threads 2 --arm
masks=llama_cpp --arm ""`` (Qwen2.5-Coder-1.5B, 2 AVX2 cores, prefix states on in both): LLM time 305 s
against 276 s (0.91; decompose requests, the longest outputs, 0.86), 41 of 44 requests with the same output.

**Sampling.** Temperature and top-p from :class:`SamplingConfig`; llama.cpp's other samplers are neutral
(``top_k=0``, ``min_p=0``, ``repeat_penalty=1``) so the distribution is the one the other backends sample:
grammar mask, top-p over the masked distribution, temperature, a draw. Each request passes its own seed
(``seed % (2**32 - 1)``: llama.cpp seeds are 32-bit and ``0xFFFFFFFF`` means "random"), so a rerun of the
same call reproduces it; ``temperature == 0`` is greedy.

**Batched** (``parallel > 1`` and more than one request): up to ``parallel`` requests decoded together, with
continuous batching, one KV stream per sequence and shared-prefix copies, in a second llama.cpp context
over the same weights (:mod:`causalneg.generation.backends.llamacpp_batched`). On a CPU a decoding step is
bound by reading the weights, so a step for several sequences costs little more than for one. Each
sequence has its own constraint state and its own seeded draw, so an output does not depend on its batch
mates, up to floating-point differences of batched matrix products (so the same request batched with
different others, or alone, can come out differently; the same call twice comes out the same). The grammar
mask comes from llguidance: ``grammar=llama_cpp`` compiles the same GBNF grammar (0.2 ms per token on
SmolLM2 against 6 ms for llama.cpp's grammar sampler, which checks every vocabulary entry, and the cost is
paid once per sequence and step), falling back to llama.cpp grammar samplers where llguidance cannot
compile it; ``grammar=outlines`` uses the llguidance JSON-schema grammar outlines builds
(``outlines_backend=outlines_core`` stays sequential). The language is the same as the sequential path's;
the masks differ in one respect: where the grammar forces a string (a key name), llguidance allows its
canonical tokens only, while llama.cpp also allows splitting it (``q`` + ``uery``), so outputs and token
counts differ from the sequential path's even for the same request.

**Sequential, with KV-cache prefix reuse** (``parallel=1``, a single request, :meth:`choice_probabilities`).
Requests run one after another. llama-cpp-python compares each prompt's tokens with what the context holds
(the previous prompt plus its output) and evaluates only the suffix after their longest common prefix.
Calls that share a system prompt and a passage (decompose, then perturb, then the judge's questions on one
pair) therefore skip most of their prefill. We keep this working by never calling ``llm.reset()`` and by
reading the judge's logits through the same ``generate`` path. Measured (SmolLM2): a 1,712-token prompt
took 27.7 s cold and 0.5 s when only the last user turn changed. Beyond the previous call, the sequence
states of the last ``prefix_states`` calls are kept in RAM and a prompt restarts from the one sharing its
longest prefix (:mod:`.llamacpp_prefix_states`): the grounded pipeline alternates prompt families, so each
substitute prompt used to re-evaluate its passage. Measured, ``python experiments/bench_llamacpp_options.py
--dataset hotpotqa --queries 2 --threads 2 --arm prefix_states=0,masks=llama_cpp --arm masks=llama_cpp``
(Qwen2.5-Coder-1.5B, 2 AVX2 cores, arms run one after the other; measured before ``masks`` existed, as
``prefix_states`` 0 against 8): LLM time 456 s against 307 s (0.67; substitute requests 0.63), wall 512 s
against 356 s.

**Failures.** A request that llama.cpp rejects (a prompt longer than ``n_ctx``) gets ``RawOutput.error``; it
never fails the batch. ``finish_reason`` is ``stop`` (end-of-generation token) or ``length`` (cut at
``max_new_tokens`` or the context end); ``output_tokens`` excludes the end-of-generation token.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from causalneg.errors import CausalNegError, ConfigError, MissingDependencyError
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.backends.llamacpp_prefix_states import PrefixStates
from causalneg.generation.schemas import json_schema, schema_hash

GRAMMARS = ("llama_cpp", "outlines")
MASKS = ("llguidance", "llama_cpp")
OUTLINES_BACKENDS = ("llguidance", "outlines_core")
INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python'
)
_SEED_MODULUS = 2**32 - 1  # 0xFFFFFFFF is LLAMA_DEFAULT_SEED (random)


def import_llama_cpp() -> Any:
    """``import llama_cpp``, or :class:`MissingDependencyError` with the command that builds it for AVX2."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError("llama-cpp-python", extra="llamacpp", hint=INSTALL_HINT) from exc
    return llama_cpp


def describe(exc: BaseException) -> str:
    """One line naming an exception (stored in ``RawOutput.error``)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}"


def choice_candidates(choices: Sequence[str], encode: Callable[[str], list[int]]) -> list[set[int]]:
    """Per choice, the token ids a reply starting with it may begin with.

    Variants: the choice as given, capitalised, each with and without a leading space; ``encode`` maps text
    to token ids without special tokens. A token that several choices may begin with (e.g. a bare space
    where a tokenizer splits " no" into " " + "no") tells them apart no better than chance and is dropped;
    a choice left without any token cannot be scored: :class:`ConfigError`.
    """
    if len(choices) < 2 or len(set(choices)) != len(choices):
        raise ConfigError(f"choices must be at least two distinct strings, got {list(choices)}")
    candidates: list[set[int]] = []
    for choice in choices:
        variants = {choice, choice.capitalize(), " " + choice, " " + choice.capitalize()}
        candidates.append({ids[0] for ids in (encode(v) for v in variants if v.strip()) if ids})
    counts = Counter(token for ids in candidates for token in ids)
    distinct = [{token for token in ids if counts[token] == 1} for ids in candidates]
    for choice, ids in zip(choices, distinct, strict=True):
        if not ids:
            raise ConfigError(
                f"choice {choice!r} shares every first token with another choice; pick distinct words"
            )
    return distinct


def choice_softmax(
    choices: Sequence[str], logits: Sequence[float] | np.ndarray, candidates: list[set[int]]
) -> dict[str, float]:
    """``{choice: p}``: softmax over choices of each choice's best candidate logit. ``logits``: (V,)."""
    scores = np.array([max(float(logits[i]) for i in ids) for ids in candidates], dtype=np.float64)
    weights = np.exp(scores - scores.max())
    probs = weights / weights.sum()
    return {choice: float(p) for choice, p in zip(choices, probs, strict=True)}


class LlamaCppBackend:
    """``GenerationBackend`` and ``ChoiceScorer`` over one ``llama_cpp.Llama``; see the module docstring.

    ``model_path``: a GGUF file; ``model_id``: the id recorded in request keys (default ``model_path``);
    ``n_threads``: None = ``os.cpu_count()``; ``llama_kwargs``: any other ``llama_cpp.Llama`` keyword.
    """

    name = "llamacpp"

    def __init__(
        self,
        model_path: str,
        model_id: str | None = None,
        *,
        grammar: str = "llama_cpp",
        outlines_backend: str = "llguidance",
        masks: str = "llguidance",
        n_threads: int | None = None,
        n_ctx: int = 4096,
        n_batch: int = 512,
        parallel: int = 1,
        prefix_states: int = 8,
        seed: int = 0,
        verbose: bool = False,
        llama_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if grammar not in GRAMMARS:
            raise ConfigError(f"generation.backend.grammar={grammar!r}; choose one of {GRAMMARS}")
        if outlines_backend not in OUTLINES_BACKENDS:
            raise ConfigError(
                f"generation.backend.outlines_backend={outlines_backend!r}; choose one of {OUTLINES_BACKENDS}"
            )
        if masks not in MASKS:
            raise ConfigError(f"generation.backend.masks={masks!r}; choose one of {MASKS}")
        if int(parallel) < 1:
            raise ConfigError(f"generation.backend.parallel={parallel!r}; must be at least 1")
        if not str(model_path).endswith(".gguf") or not os.path.isfile(model_path):
            raise ConfigError(f"llamacpp needs a GGUF file, got {model_path!r}")
        llama_cpp = import_llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model_path = str(model_path)
        self.model_id = model_id or self.model_path
        self.grammar, self.outlines_backend, self.masks = grammar, outlines_backend, masks
        self.parallel, self.n_batch = int(parallel), n_batch
        self._decoder: Any = None  # BatchedDecoder, built on the first batched call
        self._prefix = PrefixStates(int(prefix_states))  # sequential path: KV states of earlier calls
        self.llm: Any = llama_cpp.Llama(
            model_path=self.model_path,
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count(),
            n_batch=n_batch,
            seed=seed,
            verbose=verbose,
            logits_all=False,
            **dict(llama_kwargs or {}),
        )
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            self.close()
            raise ConfigError(f"GGUF {self.model_path} has no chat template (tokenizer.chat_template)")
        text = self.llm._model.token_get_text  # llama-cpp-python's own way of naming BOS/EOS for templates
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self._formatter: Any = Jinja2ChatFormatter(
            template=template,
            eos_token=text(eos) if eos != -1 else "",
            bos_token=text(bos) if bos != -1 else "",
            add_generation_prompt=True,
        )
        self._constraints: dict[str, dict[str, Any]] = {}
        self._batch_constraints: dict[str, Any] = {}
        self._llg_tokenizer: Any = None
        self._outlines_model: Any = None

    def prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The chat template rendered with the assistant turn opened, tokenised (as create_chat_completion)."""
        result = self._formatter(messages=[dict(m) for m in messages])
        tokens: list[int] = self.llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        return tokens

    def _constraint(self, schema: type[BaseModel]) -> dict[str, Any]:
        """``create_completion`` keyword(s) that constrain to ``schema`` (built once per schema)."""
        key = schema_hash(schema)
        if key not in self._constraints:
            spec = json_schema(schema)
            if self.grammar == "llama_cpp":
                from llama_cpp import LlamaGrammar

                grammar = LlamaGrammar.from_json_schema(json.dumps(spec), verbose=False)
                self._check_grammar(grammar, schema)
                self._constraints[key] = {"grammar": grammar}
            else:
                import outlines
                from outlines.types import JsonSchema

                if self._outlines_model is None:
                    self._outlines_model = outlines.from_llamacpp(self.llm)
                if self.outlines_backend == "llguidance":
                    spec = {**spec, "x-guidance": {"whitespace_flexible": False}}
                # llguidance 1.7 calls a deprecated llama_cpp function once per vocabulary entry
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "llama_token_get_attr", DeprecationWarning)
                    generator: Any = outlines.Generator(
                        self._outlines_model, JsonSchema(json.dumps(spec)), backend=self.outlines_backend
                    )
                self._constraints[key] = {"processor": generator.logits_processor}
        return self._constraints[key]

    def _check_grammar(self, grammar: Any, schema: type[BaseModel]) -> None:
        """llama.cpp parses the grammar per request and returns NULL on an error: fail once, here, instead."""
        import llama_cpp

        vocab = self.llm._model.vocab
        sampler = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not sampler:
            raise ConfigError(f"llama.cpp could not parse the grammar of schema {schema.__name__}")
        llama_cpp.llama_sampler_free(sampler)

    def _sampling_kwargs(self, sampling: SamplingConfig, seed: int) -> dict[str, Any]:
        return {
            "max_tokens": sampling.max_new_tokens,
            "temperature": max(0.0, float(sampling.temperature)),
            "top_p": float(sampling.top_p),
            "top_k": 0,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "seed": int(seed) % _SEED_MODULUS,
        }

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        """One RawOutput per request, in order: batched when ``parallel > 1``, else sequential (module docstring)."""
        constraint = self._constraint(schema)
        if self.parallel > 1 and len(requests) > 1:
            batched = self._batched_constraint(schema)
            if batched is not None:
                return self._generate_batched(requests, batched, sampling)
        return self._generate_sequential(requests, constraint, sampling, self._sequential_guidance(schema))

    def _sequential_guidance(self, schema: type[BaseModel]) -> Any:
        """The llguidance constraint that masks the sequential path's ``grammar=llama_cpp`` requests, or None.

        None with ``masks=llama_cpp``, with ``grammar=outlines`` (its own processor), or where llguidance is
        missing or cannot compile the grammar (llama.cpp's grammar sampler then masks, as before).
        """
        from causalneg.generation.backends.llamacpp_batched import GuidanceConstraint

        if self.grammar != "llama_cpp" or self.masks != "llguidance":
            return None
        made = self._batched_constraint(schema)
        return made if isinstance(made, GuidanceConstraint) else None

    def _batched_constraint(self, schema: type[BaseModel]) -> Any:
        """The batched path's per-sequence constraint factory for ``schema`` (built once), or None.

        ``grammar=llama_cpp``: the same GBNF grammar, compiled by llguidance (:func:`gbnf_to_lark`), or llama.cpp
        grammar samplers where llguidance is missing or cannot compile it; ``grammar=outlines`` with
        ``llguidance``: the same llguidance JSON-schema grammar outlines builds; ``outlines_core``: None
        (sequential).
        """
        from causalneg.generation.backends import llamacpp_batched as batched

        key = schema_hash(schema)
        if key in self._batch_constraints:
            return self._batch_constraints[key]
        made: Any = None
        n_vocab = int(self.llm.n_vocab())
        if self.grammar == "llama_cpp":
            grammar = self._constraint(schema)["grammar"]
            try:
                import llguidance

                if self._llg_tokenizer is None:
                    self._llg_tokenizer = batched.guidance_tokenizer(self.llm)
                lark = llguidance.LLMatcher.grammar_from_lark(batched.gbnf_to_lark(grammar._grammar))
                made = batched.GuidanceConstraint(self._llg_tokenizer, lark, n_vocab)
            except Exception as exc:  # no llguidance, or a grammar it cannot compile: exact but slower
                warnings.warn(
                    f"llamacpp: llama.cpp grammar samplers for {schema.__name__} ({describe(exc)})",
                    stacklevel=2,
                )
                made = batched.LlamaGrammarConstraint(self.llm._model.vocab, grammar)
        elif self.outlines_backend == "llguidance":
            import llguidance

            if self._llg_tokenizer is None:
                self._llg_tokenizer = batched.guidance_tokenizer(self.llm)
            spec = {**json_schema(schema), "x-guidance": {"whitespace_flexible": False}}
            made = batched.GuidanceConstraint(
                self._llg_tokenizer, llguidance.grammar_from("json_schema", json.dumps(spec)), n_vocab
            )
        self._batch_constraints[key] = made
        return made

    def _generate_sequential(
        self,
        requests: Sequence[GenerationRequest],
        constraint: dict[str, Any],
        sampling: SamplingConfig,
        guidance: Any = None,
    ) -> list[RawOutput]:
        from llama_cpp import LogitsProcessorList

        from causalneg.generation.backends.llamacpp_batched import GuidanceLogitsProcessor

        outputs: list[RawOutput] = []
        for request in requests:
            try:
                kwargs = self._sampling_kwargs(sampling, request.seed)
                prompt = self.prompt_tokens(request.messages)
                processor = None
                if guidance is not None:
                    processor = GuidanceLogitsProcessor(guidance.start(), len(prompt))
                    kwargs["logits_processor"] = LogitsProcessorList([processor])
                elif "grammar" in constraint:
                    kwargs["grammar"] = constraint["grammar"]
                else:
                    constraint["processor"].reset()  # a fresh matcher per request
                    kwargs["logits_processor"] = LogitsProcessorList([constraint["processor"]])
                self._prefix.restore(self.llm, prompt)
                completion = self.llm.create_completion(prompt, **kwargs)
                self._prefix.save(self.llm)
                if processor is not None and processor.error is not None:
                    raise CausalNegError(processor.error)
            except Exception as exc:  # one request's failure (e.g. prompt longer than n_ctx)
                outputs.append(RawOutput(request.key, "", 0, error=describe(exc)))
                continue
            choice = completion["choices"][0]
            outputs.append(
                RawOutput(
                    request.key,
                    str(choice["text"]),
                    int(completion["usage"]["completion_tokens"]),
                    finish_reason=choice.get("finish_reason"),
                )
            )
        return outputs

    def _generate_batched(
        self, requests: Sequence[GenerationRequest], constraint: Any, sampling: SamplingConfig
    ) -> list[RawOutput]:
        """The requests decoded ``parallel`` at a time (:mod:`.llamacpp_batched`), same limits and errors."""
        from causalneg.generation.backends.llamacpp_batched import BatchedDecoder, Job, SequenceSampler

        n_ctx = int(self.llm.n_ctx())
        if self._decoder is None:
            self._decoder = BatchedDecoder(self.llm, self.parallel, n_ctx, self.n_batch)
        decoder = self._decoder
        outputs: list[RawOutput | None] = [None] * len(requests)
        jobs: list[Job] = []
        temperature, top_p = max(0.0, float(sampling.temperature)), float(sampling.top_p)
        for index, request in enumerate(requests):
            try:
                prompt = self.prompt_tokens(request.messages)
                if len(prompt) >= n_ctx:  # create_completion's check and message
                    raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")
                wanted = sampling.max_new_tokens if sampling.max_new_tokens > 0 else n_ctx - len(prompt)
                sampler = SequenceSampler(
                    constraint.start(), temperature, top_p, request.seed % _SEED_MODULUS
                )
            except Exception as exc:
                outputs[index] = RawOutput(request.key, "", 0, error=describe(exc))
                continue
            jobs.append(Job(index, prompt, min(wanted, n_ctx - len(prompt)), sampler))
        decoder.run(jobs)
        for job in jobs:
            text = self.llm.detokenize(job.output, prev_tokens=job.prompt).decode("utf-8", errors="ignore")
            key = requests[job.index].key
            outputs[job.index] = RawOutput(
                key, text, len(job.output), error=job.error, finish_reason=job.finish
            )
        return [output for output in outputs if output is not None]

    def choice_probabilities(
        self, requests: Sequence[GenerationRequest], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        """Per request, ``{choice: p}`` from the next-token logits after the opened assistant turn.

        Each choice scores the max logit among its candidate first tokens (:func:`choice_candidates`), then a
        softmax over choices. Deterministic (greedy, no seed). The prompt goes through ``Llama.generate``
        (stopped after its first step) so the KV-cache prefix reuse applies here too; the logits are read
        by a logits processor, which sees the raw next-token logits in token-id order.
        """
        from llama_cpp import LogitsProcessorList

        def encode(text: str) -> list[int]:
            ids: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            return ids

        candidates = choice_candidates(choices, encode)
        captured: list[np.ndarray] = []

        def capture(input_ids: Any, scores: Any) -> Any:
            captured.append(np.array(scores, dtype=np.float32, copy=True))
            return scores

        results: list[dict[str, float]] = []
        for request in requests:
            captured.clear()
            tokens = self.prompt_tokens(request.messages)
            if len(tokens) >= self.llm.n_ctx():
                raise CausalNegError(
                    f"request {request.key}: prompt of {len(tokens)} tokens exceeds generation.backend.n_ctx"
                )
            self._prefix.restore(self.llm, tokens)
            steps = self.llm.generate(
                tokens, temp=0.0, top_k=0, min_p=0.0, top_p=1.0, repeat_penalty=1.0,
                logits_processor=LogitsProcessorList([capture]),
            )  # fmt: skip
            try:
                next(steps)
            finally:
                steps.close()
            self._prefix.save(self.llm)
            results.append(choice_softmax(choices, captured[-1], candidates))
        return results

    def close(self) -> None:
        """Free the model and its context; the object is unusable afterwards."""
        self._constraints.clear()
        self._batch_constraints.clear()
        getattr(self, "_prefix", PrefixStates(0)).clear()
        self._outlines_model = self._llg_tokenizer = None
        decoder, self._decoder = getattr(self, "_decoder", None), None
        if decoder is not None:
            decoder.close()
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()
