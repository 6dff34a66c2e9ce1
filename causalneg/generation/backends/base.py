"""The narrow protocol every generation backend implements.

A backend turns chat-formatted requests into raw text constrained to a JSON schema. It knows nothing about
decomposition, perturbation or filtering: the pipeline validates the raw text with Pydantic afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

ChatMessages = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters shared by all backends (part of every request's cache key)."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95


@dataclass(frozen=True)
class GenerationRequest:
    """One structured call: the messages, the seed recorded for it, and its content-addressed key."""

    key: str
    messages: ChatMessages
    seed: int


@dataclass(frozen=True)
class RawOutput:
    """What a backend returned for one request. ``error`` is set (and ``text`` may be empty) on failure."""

    key: str
    text: str
    output_tokens: int
    error: str | None = None
    finish_reason: str | None = None


class GenerationBackend(Protocol):
    """Generate schema-constrained JSON text for a batch of requests.

    Implementations must return exactly one RawOutput per request, in order, and must not raise for a
    single request's failure (timeouts, HTTP errors): they report it in ``RawOutput.error`` so the
    pipeline can record it and retry later. They may raise for failures that affect every request
    (model not found, engine start-up failure).
    """

    name: str
    model_id: str

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        schema: type[BaseModel],
        sampling: SamplingConfig,
    ) -> list[RawOutput]: ...

    def close(self) -> None: ...


class ChoiceScorer(Protocol):
    """A backend that can score a closed set of replies (the grounded method's LLM judge).

    ``choice_probabilities(requests, choices)`` returns, per request, ``{choice: p}`` with ``sum(p) == 1``: the
    model's next-token distribution at the start of the assistant's reply, restricted to the first token of
    each choice and renormalised (e.g. ``choices=("yes", "no")``). Deterministic: no sampling, no seed.
    """

    def choice_probabilities(
        self, requests: Sequence[GenerationRequest], choices: Sequence[str]
    ) -> list[dict[str, float]]: ...
