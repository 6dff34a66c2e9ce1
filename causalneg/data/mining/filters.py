"""False-negative filters for mined candidates (pure functions, no I/O).

A retriever returns, per query, a ranked list of ``(passage_id, score)`` and the score of each judged positive
under the same retriever. :func:`filter_candidates` applies, in this order, and counts each dropped candidate
under the first rule that drops it:

1. ``positive``: judged positives are removed. Ranks are then assigned 1, 2, ... to the remaining candidates
   in retriever order (so a rank does not depend on how many positives a query has);
2. ``below_rank_min`` / ``above_rank_max``: keep ranks in ``[rank_min, rank_max]`` (``rank_max=None``: no
   upper bound beyond the retrieval depth);
3. ``absolute_margin`` (m): drop ``s > s_pos - m``;
4. ``relative_margin`` (p; NV-Retriever's TopK-PercPos, Moreira et al. 2024, p = 0.95): drop ``s > p*s_pos``.
   A ratio of scores only means something for ``s_pos > 0``: when ``s_pos <= 0`` (e.g. a BM25 positive that
   shares no word with the query, whose threshold would drop every retrieved candidate) the rule is not
   applied to that query, which is counted in ``relative_margin_undefined``;
5. ``max_per_query``: keep the first N survivors.

``s_pos`` is the *best* positive's score by default (``positive_score="max"``); ``"best_graded"`` is the best
score among the positives of the query's highest relevance grade (graded qrels: a grade-1 passage that the
retriever ranks above the grade-2 one must not set the bar; with one grade it equals ``"max"``); ``"min"``
applies the rule for every positive (NV-Retriever defines it per (query, positive) pair, and a query's
negatives are shared by all its positives). ``"min"`` is stricter than it looks on multi-positive data: with
BM25 on HotpotQA train, where the second supporting paragraph often shares few words with the question,
``min`` drops 17% of the candidates and leaves 106 of 1,153 questions with none; ``max`` drops 1% and leaves 1
(SciFact: 58 vs 47 of 809 empty; Semanlink: 474 vs 304 of 6,680).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

POSITIVE_SCORES = ("max", "min", "best_graded")
SKIP_REASONS = (
    "positive",
    "below_rank_min",
    "above_rank_max",
    "absolute_margin",
    "relative_margin",
    "max_per_query",
)


@dataclass(frozen=True)
class RankedCandidates:
    """One query's retrieval result: ``candidates`` best first (positives may be among them) and the score of
    every judged positive under the same retriever (whether or not it was retrieved). ``positive_grades``: the
    qrels grade of each positive (``positive_score="best_graded"``; a missing grade counts as 1)."""

    query_id: str
    positive_ids: tuple[str, ...]
    candidates: tuple[tuple[str, float], ...]
    positive_scores: Mapping[str, float] = field(default_factory=dict)
    positive_grades: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """A kept negative: passage id, retriever score and 1-based rank among the non-positive candidates."""

    id: str
    score: float
    rank: int


@dataclass(frozen=True)
class FilterConfig:
    rank_min: int = 1
    rank_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    positive_score: Literal["min", "max", "best_graded"] = "max"
    max_per_query: int | None = None

    def __post_init__(self) -> None:
        if self.rank_min < 1:
            raise ValueError(f"rank_min is 1-based and must be >= 1, got {self.rank_min}")
        if self.rank_max is not None and self.rank_max < self.rank_min:
            raise ValueError(f"rank_max ({self.rank_max}) must be >= rank_min ({self.rank_min})")
        if self.relative_margin is not None and not 0 < self.relative_margin <= 1:
            raise ValueError(f"relative_margin must be in (0, 1], got {self.relative_margin}")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise ValueError(f"absolute_margin must be >= 0, got {self.absolute_margin}")
        if self.positive_score not in POSITIVE_SCORES:
            raise ValueError(f"positive_score must be one of {POSITIVE_SCORES}, got {self.positive_score!r}")
        if self.max_per_query is not None and self.max_per_query < 1:
            raise ValueError(f"max_per_query must be >= 1 or None, got {self.max_per_query}")

    @property
    def needs_positive_score(self) -> bool:
        return self.absolute_margin is not None or self.relative_margin is not None


def margin_limits(positive_score: float, config: FilterConfig) -> tuple[float, float]:
    """The highest score a candidate may have under each margin rule: ``(s_pos - m, p * s_pos)``, ``+inf`` for
    a disabled rule and for the relative rule when ``s_pos <= 0``."""
    abs_limit = positive_score - config.absolute_margin if config.absolute_margin is not None else math.inf
    rel_limit = math.inf
    if config.relative_margin is not None and positive_score > 0:
        rel_limit = config.relative_margin * positive_score
    return abs_limit, rel_limit


def _reference_score(ranked: RankedCandidates, config: FilterConfig) -> float:
    scored = [p for p in ranked.positive_ids if p in ranked.positive_scores]
    if not scored:
        raise ValueError(f"query {ranked.query_id!r}: margins need the positives' scores, none was given")
    if config.positive_score == "best_graded":
        top = max(ranked.positive_grades.get(p, 1) for p in scored)
        scored = [p for p in scored if ranked.positive_grades.get(p, 1) == top]
    scores = [ranked.positive_scores[p] for p in scored]
    return min(scores) if config.positive_score == "min" else max(scores)


def filter_candidates(ranked: RankedCandidates, config: FilterConfig) -> tuple[list[Candidate], Counter[str]]:
    """Apply the rules above to one query. Returns the kept candidates (best first) and a count per rule."""
    skipped: Counter[str] = Counter()
    positives = set(ranked.positive_ids)
    abs_limit, rel_limit = math.inf, math.inf
    if config.needs_positive_score:
        reference = _reference_score(ranked, config)
        abs_limit, rel_limit = margin_limits(reference, config)
        if config.relative_margin is not None and reference <= 0:
            skipped["relative_margin_undefined"] += 1
    kept: list[Candidate] = []
    rank = 0
    for pid, score in ranked.candidates:
        if pid in positives:
            skipped["positive"] += 1
            continue
        rank += 1
        if rank < config.rank_min:
            skipped["below_rank_min"] += 1
        elif config.rank_max is not None and rank > config.rank_max:
            skipped["above_rank_max"] += 1
        elif score > abs_limit:
            skipped["absolute_margin"] += 1
        elif score > rel_limit:
            skipped["relative_margin"] += 1
        elif config.max_per_query is not None and len(kept) >= config.max_per_query:
            skipped["max_per_query"] += 1
        else:
            kept.append(Candidate(id=pid, score=float(score), rank=rank))
    return kept, skipped


def filter_all(
    ranked_lists: Iterable[RankedCandidates], config: FilterConfig
) -> tuple[dict[str, list[Candidate]], dict[str, int]]:
    """Filter every query. Counts: ``considered`` (candidates seen), one key per rule in ``SKIP_REASONS`` (in
    candidates), ``kept``, ``queries``, ``queries_without_candidates`` and ``relative_margin_undefined``
    (queries whose reference positive score is <= 0)."""
    kept_by_query: dict[str, list[Candidate]] = {}
    totals: Counter[str] = Counter({reason: 0 for reason in (*SKIP_REASONS, "relative_margin_undefined")})
    for ranked in ranked_lists:
        kept, skipped = filter_candidates(ranked, config)
        kept_by_query[ranked.query_id] = kept
        totals.update(skipped)
        totals["considered"] += len(ranked.candidates)
        totals["kept"] += len(kept)
        totals["queries_without_candidates"] += int(not kept)
    totals["queries"] = len(kept_by_query)
    return kept_by_query, dict(totals)
