"""Filters for LLM outputs: pure functions that keep or reject, always with a reason.

Request level (:func:`parse_output`): ``backend_error``, ``invalid_json`` (not parseable, e.g. cut by the token
limit), ``schema_violation`` (parses but fails the Pydantic model or its semantic validators).

Negative level (:func:`check_negative`, in this order): ``invalid_reference`` (perturbation names no existing
node/strategy), ``empty``, ``too_short``, ``too_long`` (reached the schema bound, i.e. was cut by it),
``meta_talk`` (talks about the passage/query instead of being a passage), ``looping`` (repeated n-grams or a
highly compressible text), ``copies_positive``, ``copies_candidate``, ``copies_query``, ``copies_prompt``,
``answer_leak``, ``duplicate`` (of a negative already kept for the query), and, in a batch step with an encoder,
``similar_to_positive``.

Near-duplicates use character n-gram shingles of the normalised text (lower case, alphanumerics, single
spaces): ``jaccard(A, B) = |A ∩ B| / |A ∪ B|`` and ``containment(A in B) = |A ∩ B| / |A|`` (a negative that is
an excerpt of the positive has containment ~1 but a low Jaccard). Answer leakage uses SQuAD-style normalisation
(lower case, no punctuation, no articles) and whole-word containment; answers that are ``yes``/``no`` or that
already appear in the query are skipped (an on-topic passage cannot avoid naming them).
"""

from __future__ import annotations

import json
import re
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ValidationError

from causalneg.generation.backends.base import RawOutput
from causalneg.generation.schemas import NEGATIVE_TEXT

REQUEST_REASONS = ("backend_error", "invalid_json", "schema_violation")
NEGATIVE_REASONS = (
    "invalid_reference",
    "empty",
    "too_short",
    "too_long",
    "meta_talk",
    "looping",
    "copies_positive",
    "copies_candidate",
    "copies_query",
    "copies_prompt",
    "answer_leak",
    "duplicate",
    "similar_to_positive",
)

META_PATTERNS = [
    r"\b(this|the above|the given|the provided|the original|the positive|the relevant|the other) "
    r"(passage|text|document|paragraph|snippet|article)s?\b",
    r"^\s*(the|this) (passage|paragraph|text|document)\b",
    r"\b(this|your|the given|the above|the user'?s?) (query|question)\b",
    r"\bthe query\b",
    r"\b(does not|doesn't|do not|did not|fails to|without) "
    r"(mention|contain|answer|provide|specify|state|say|include)\b",
    r"\bno (information|mention|details?) (about|of|on|regarding)\b",
    r"\b(hard )?negative (passage|example)s?\b",
    r"\b(counterfactual|break strategy|requirement n\d)\b",
    r"\b(as an ai|i cannot|i can't)\b",
    r"^\s*(here is|here are|sure\b)",
    r"\bnot relevant\b",
]
_META = re.compile("|".join(f"(?:{p})" for p in META_PATTERNS), re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds; see the module docstring for the measures."""

    min_chars: int = 60
    min_words: int = 8
    max_chars: int = NEGATIVE_TEXT  # a text this long was cut by the schema bound
    shingle: int = 5  # characters per shingle
    near_duplicate: float = 0.8  # Jaccard at or above which two texts are near-duplicates
    excerpt: float = 0.9  # containment of the negative in a passage at or above which it is a copied excerpt
    query_copy: float = 0.8  # containment of the negative in the query
    prompt_copy: float = 0.6  # containment of the negative in the prompt's instructions
    loop_ratio: float = 0.5  # share of repeated word trigrams
    min_compression: float = 0.2  # zlib size / raw size below which a text (>= 80 chars) loops
    max_positive_similarity: float | None = 0.95  # cosine under the encoder; None = off
    check_answers: bool = True


@dataclass(frozen=True)
class FilterContext:
    """What one query's negatives are compared against."""

    query: str
    positive: str
    candidates: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    instructions: str = ""  # the prompt without query and passages (prompting.instruction_text)


@dataclass(frozen=True)
class Verdict:
    reason: str | None = None  # None = kept
    detail: str = ""

    @property
    def kept(self) -> bool:
        return self.reason is None


def parse_output(raw: RawOutput, schema: type[BaseModel]) -> tuple[BaseModel | None, Verdict]:
    """Validate one raw output against ``schema`` (JSON, then the Pydantic model with its validators)."""
    if raw.error:
        return None, Verdict("backend_error", raw.error)
    try:
        json.loads(raw.text)
    except json.JSONDecodeError as err:
        cut = f" (cut at {raw.output_tokens} tokens)" if raw.finish_reason == "length" else ""
        return None, Verdict("invalid_json", f"{err.msg} at char {err.pos}{cut}")
    try:
        return schema.model_validate_json(raw.text), Verdict()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return None, Verdict("schema_violation", f"{err.error_count()} error(s); {where}: {first['msg']}")


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces."""
    return " ".join(text.lower().translate(_PUNCT).split())


def shingles(text: str, n: int) -> set[str]:
    norm = normalize(text)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def containment(a: set[str], b: set[str]) -> float:
    """Share of ``a``'s shingles found in ``b``."""
    return len(a & b) / len(a) if a else 0.0


def is_looping(text: str, cfg: FilterConfig) -> bool:
    words = normalize(text).split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) >= 8 and 1 - len(set(trigrams)) / len(trigrams) >= cfg.loop_ratio:
        return True
    raw = text.encode("utf-8")
    return len(raw) >= 80 and len(zlib.compress(raw, 9)) / len(raw) < cfg.min_compression


def leaked_answer(text: str, answers: Sequence[str], query: str) -> str | None:
    """The first known answer contained (as whole words, SQuAD-normalised) in ``text``, if any."""

    def squad(s: str) -> str:
        return f" {' '.join(_ARTICLES.sub(' ', normalize(s)).split())} "

    body, asked = squad(text), squad(query)
    for answer in answers:
        norm = squad(answer)
        if norm.strip() in ("", "yes", "no") or norm in asked:
            continue
        if norm in body:
            return answer
    return None


def check_negative(text: str, ctx: FilterContext, cfg: FilterConfig, kept: Sequence[str] = ()) -> Verdict:
    """Keep or reject one negative text (all checks but the encoder similarity)."""
    stripped = text.strip()
    if not stripped:
        return Verdict("empty")
    if len(stripped) < cfg.min_chars or len(stripped.split()) < cfg.min_words:
        return Verdict("too_short", f"{len(stripped)} chars, {len(stripped.split())} words")
    if len(text) >= cfg.max_chars:
        return Verdict("too_long", f"{len(text)} chars (bound {cfg.max_chars})")
    match = _META.search(stripped)
    if match:
        return Verdict("meta_talk", repr(match.group(0)))
    if is_looping(stripped, cfg):
        return Verdict("looping")
    mine = shingles(stripped, cfg.shingle)
    copied = _copies(mine, ctx.positive, cfg)
    if copied:
        return Verdict("copies_positive", copied)
    for i, candidate in enumerate(ctx.candidates, start=1):
        copied = _copies(mine, candidate, cfg)
        if copied:
            return Verdict("copies_candidate", f"C{i}: {copied}")
    query_share = containment(mine, shingles(ctx.query, cfg.shingle))
    if query_share >= cfg.query_copy:
        return Verdict("copies_query", f"containment {query_share:.2f}")
    prompt_share = containment(mine, shingles(ctx.instructions, cfg.shingle)) if ctx.instructions else 0.0
    if prompt_share >= cfg.prompt_copy:
        return Verdict("copies_prompt", f"containment {prompt_share:.2f}")
    if cfg.check_answers:
        answer = leaked_answer(stripped, ctx.answers, ctx.query)
        if answer is not None:
            return Verdict("answer_leak", repr(answer))
    for other in kept:
        if (
            normalize(other) == normalize(stripped)
            or jaccard(mine, shingles(other, cfg.shingle)) >= cfg.near_duplicate
        ):
            return Verdict("duplicate")
    return Verdict()


def _copies(mine: set[str], passage: str, cfg: FilterConfig) -> str:
    theirs = shingles(passage, cfg.shingle)
    j, c = jaccard(mine, theirs), containment(mine, theirs)
    if j >= cfg.near_duplicate or c >= cfg.excerpt:
        return f"jaccard {j:.2f}, containment {c:.2f}"
    return ""


Embedder = Callable[[list[str]], torch.Tensor]  # texts -> (n, d) L2-normalised embeddings


def positive_similarity(texts: Sequence[str], positive: str, embed: Embedder) -> list[float]:
    """Cosine between the positive and each text: ``embed([positive, *texts])`` rows are unit vectors."""
    if not texts:
        return []
    vectors = embed([positive, *texts]).float()
    vectors = torch.nn.functional.normalize(vectors, dim=-1)  # idempotent for unit vectors; guards others
    return (vectors[1:] @ vectors[0]).tolist()
