"""The ``transformers`` backend: outlines over a Hugging Face causal LM (the CPU default).

Constrained decoding: ``outlines.from_transformers(model, tokenizer)``, one ``outlines.Generator`` per schema
(built once, reused), prompts passed as ``outlines.inputs.Chat`` so the model's chat template is applied
exactly once. The grammar engine is configurable (``grammar``):

- ``llguidance`` (default): computes each token mask lazily from the JSON schema (measured with SmolLM2's 49k
  vocabulary: matcher built in ~10 ms, 0.3-0.7 ms per token mask, no extra memory). Whitespace between JSON
  tokens is disabled (``x-guidance: whitespace_flexible=false``) so a weak model cannot pad with blanks.
- ``outlines_core``: precomputes a token index over the regex of the schema; its cost grows with the unrolled
  string bounds times the vocabulary (measured with SmolLM2's vocabulary and 600-character negatives: 37 s /
  3.2 GB for the naive schema with N=3, 42 s / 3.8 GB for the perturbation schema; ENVIRONMENT.md measured
  ~40 s / 6.6 GB for a decomposition schema, and ours unrolls all 8 positional nodes there, see
  ``Decomposition.model_json_schema``). Only sensible with small vocabularies.
- ``xgrammar`` is not offered: through outlines it cannot turn off free whitespace, and with a random model it
  let raw control characters into strings (measured), which are invalid JSON.

``logit_bias`` (``[[token text, bias], ...]``) is added after the grammar mask (tests use it to make a random
model close its strings early). Token counts and finish reasons come from the sampler, which sees every step:
``finish_reason`` is ``stop`` when the row emitted EOS and ``length`` when it hit ``max_new_tokens``.

**Sampling with per-request seeds inside a batch.** Hugging Face samples with the global RNG, so a batch would
share one stream and a request's output would depend on its batch mates. Instead we decode greedily
(``do_sample=False``) over scores perturbed by :class:`SeededSampler`: after the grammar mask, scores are divided
by the temperature, restricted to the top-p nucleus, and shifted by Gumbel noise ``g = -log(-log u)`` drawn from
a ``torch.Generator`` seeded with the request's seed. ``argmax(s/T + g)`` is an exact sample from
``softmax(s/T)`` (Gumbel-max), so each request is a seeded sample independent of the batch (up to float
rounding from left padding) and the global RNG is never touched. ``temperature == 0`` is plain greedy decoding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from pydantic import BaseModel

from causalneg.errors import ConfigError
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.schemas import json_schema, schema_hash

GRAMMARS = ("llguidance", "outlines_core")


class SeededSampler:
    """Wraps the grammar's logits processor; adds temperature, top-p and per-row seeded Gumbel noise.

    Shapes: ``input_ids`` (B, L), ``scores`` (B, V) -> (B, V). Also records, per row, how many tokens were
    generated before the end-of-sequence token (``lengths``; None while still running).
    """

    def __init__(
        self, grammar_processor: Any, stop_ids: set[int], logit_bias: dict[int, float] | None = None
    ) -> None:
        self.inner = grammar_processor
        self.stop_ids = stop_ids
        self.logit_bias = logit_bias or {}
        self.generators: list[torch.Generator] = []
        self.temperature, self.top_p = 1.0, 1.0
        self.steps = 0
        self.lengths: list[int | None] = []

    def begin(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.steps, self.lengths = 0, [None] * len(seeds)

    def reset(self) -> None:
        self.inner.reset()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.steps > 0:  # the previous step's token is the last column
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.lengths[row] is None and token in self.stop_ids:
                    self.lengths[row] = self.steps
        self.steps += 1
        scores = self.inner(input_ids, scores)
        for token, bias in self.logit_bias.items():  # after the mask: a disallowed token stays -inf
            scores[:, token] += bias
        if self.temperature <= 0:
            return scores
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            scores = _top_p(scores, self.top_p)
        for row, generator in enumerate(self.generators):
            u = torch.rand(scores.shape[1], generator=generator).clamp_(1e-20, 1.0 - 1e-7)
            scores[row] += -torch.log(-torch.log(u))
        return scores


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the smallest set whose probability mass reaches ``top_p``. (B, V)."""
    sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative - torch.softmax(sorted_scores, dim=-1) >= top_p  # mass before this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class TransformersBackend:
    """``GenerationBackend`` over ``transformers`` + outlines. See the module docstring for sampling."""

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        model_id: str | None = None,
        dtype: str = "float32",
        grammar: str = "llguidance",
        batch_size: int = 4,
        device: str = "cpu",
        logit_bias: Mapping[str, float] | Sequence[Sequence[Any]] | None = None,
    ) -> None:
        import outlines
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if grammar not in GRAMMARS:
            raise ConfigError(f"generation.backend.grammar={grammar!r}; choose one of {GRAMMARS}")
        if batch_size < 1:
            raise ConfigError(f"generation.backend.batch_size must be >= 1, got {batch_size}")
        self.model_id = model_id or model_path
        self.grammar, self.batch_size = grammar, batch_size
        # cast: transformers' stubs type these loaders too narrowly for outlines' signatures
        self.tokenizer = cast(Any, AutoTokenizer.from_pretrained(model_path))
        self.hf_model = cast(
            Any, AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        )
        self.hf_model.to(device).eval()
        self.model = outlines.from_transformers(self.hf_model, self.tokenizer)
        self._generators: dict[str, tuple[Any, SeededSampler]] = {}
        self.logit_bias = self._token_bias(logit_bias or {})
        eos = self.tokenizer.eos_token_id
        self._eos_id = int(eos if eos is not None else next(iter(self._stop_ids())))

    def _token_bias(self, bias: Mapping[str, float] | Sequence[Sequence[Any]]) -> dict[int, float]:
        """``logit_bias`` by token text (each exactly one token): ``{text: bias}`` or ``[[text, bias], ...]``.

        The list form suits configs: Hydra overrides and MLflow parameter names cannot hold arbitrary keys.
        """
        pairs = list(bias.items()) if isinstance(bias, Mapping) else [tuple(pair) for pair in bias]
        out: dict[int, float] = {}
        for text, value in pairs:
            ids = self.tokenizer.encode(str(text), add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"generation.backend.logit_bias: {text!r} is {len(ids)} tokens, not one")
            out[int(ids[0])] = float(value)
        return out

    def _stop_ids(self) -> set[int]:
        eos = self.hf_model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        ids |= {i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}
        return ids

    def _generator(self, schema: type[BaseModel]) -> tuple[Any, SeededSampler]:
        key = schema_hash(schema)
        if key not in self._generators:
            import outlines
            from outlines.backends import get_json_schema_logits_processor

            spec = json_schema(schema)
            if self.grammar == "llguidance":
                spec = {**spec, "x-guidance": {"whitespace_flexible": False}}
            inner = get_json_schema_logits_processor(self.grammar, self.model, json.dumps(spec))
            sampler = SeededSampler(inner, self._stop_ids(), self.logit_bias)
            self._generators[key] = (outlines.Generator(self.model, processor=sampler), sampler)
        return self._generators[key]

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        from outlines.inputs import Chat

        generator, sampler = self._generator(schema)
        outputs: list[RawOutput] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            sampler.begin([r.seed for r in chunk], sampling.temperature, sampling.top_p)
            with torch.inference_mode():
                texts = generator.batch(
                    [Chat(list(r.messages)) for r in chunk],
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self._eos_id,  # finished rows are padded with EOS, which a stopped grammar accepts
                )
            for request, text, length in zip(chunk, texts, sampler.lengths, strict=True):
                # A row whose EOS was the batch's last token is never seen by the sampler: generation then
                # stopped early because every row had finished.
                finished = length is not None or sampler.steps < sampling.max_new_tokens
                tokens = length if length is not None else sampler.steps  # counts the EOS token
                outputs.append(
                    RawOutput(
                        request.key, str(text), int(tokens), finish_reason="stop" if finished else "length"
                    )
                )
        return outputs

    def choice_probabilities(
        self, requests: Sequence[GenerationRequest], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        """Per request, ``{choice: p}`` from the next-token logits after the opened assistant turn (ChoiceScorer).

        One forward pass per request (no padding, so a request's result does not depend on its batch mates)
        over ``apply_chat_template(..., add_generation_prompt=True)``; each choice scores the max logit among
        its candidate first tokens, then a softmax over choices, as in the llamacpp backend. Deterministic.
        """
        from causalneg.generation.backends.llamacpp_backend import choice_candidates, choice_softmax

        def encode(text: str) -> list[int]:
            return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]

        candidates = choice_candidates(choices, encode)
        device = next(self.hf_model.parameters()).device
        results = []
        for request in requests:
            text = self.tokenizer.apply_chat_template(
                list(request.messages), add_generation_prompt=True, tokenize=False
            )
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            with torch.inference_mode():
                logits = self.hf_model(input_ids=ids).logits[0, -1].float().cpu().numpy()  # (V,)
            results.append(choice_softmax(choices, logits, candidates))
        return results

    def close(self) -> None:
        self._generators.clear()
