"""Typed records that flow between stages: queries, passages, negatives with their source, training groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class NegativeSource(IntEnum):
    """Where a negative came from. Stored in artifacts by name and carried in every batch as a tensor."""

    MINED = 0
    GENERATED = 1
    NAIVE_GENERATED = 2
    RANDOM = 3
    IN_BATCH = 4

    @classmethod
    def parse(cls, value: str | int | NegativeSource) -> NegativeSource:
        """Accept the enum, its integer value or its lower-case name (``"generated"``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown negative source {value!r}; expected one of: {names}") from None

    @property
    def is_generated(self) -> bool:
        """True for LLM-written negatives (counterfactual or naive)."""
        return self in (NegativeSource.GENERATED, NegativeSource.NAIVE_GENERATED)


@dataclass(frozen=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and text joined as BEIR models see them (``"title. text"``, or whichever part is non-empty)."""
        if self.title and self.text:
            return f"{self.title}. {self.text}"
        return self.title or self.text


@dataclass(frozen=True)
class Negative:
    """A negative passage for one query. ``passage_id`` is None for generated text that is not in the corpus."""

    text: str
    source: NegativeSource
    passage_id: str | None = None
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class TrainingGroup:
    """One contrastive example: a query, one positive passage and its negatives (each with a source).

    ``judged_ids``: every passage id the qrels judge relevant for the query (score > 0), for false-negative
    masking of in-batch candidates; empty means just ``positive.id``. ``extra_positives``: the query's other
    positives in a multi-positive group (``data.positives=multi``), best grade first; empty otherwise."""

    query: Query
    positive: Passage
    negatives: tuple[Negative, ...]
    judged_ids: tuple[str, ...] = ()
    extra_positives: tuple[Passage, ...] = ()


@dataclass
class RetrievalSplit:
    """Queries of one split and their graded judgments ``qrels[query_id][passage_id] = relevance``."""

    queries: dict[str, Query]
    qrels: dict[str, dict[str, int]]

    def positives(self, query_id: str) -> list[str]:
        """Passage ids judged relevant (relevance > 0), in a stable order."""
        return sorted(pid for pid, rel in self.qrels.get(query_id, {}).items() if rel > 0)


@dataclass
class RetrievalDataset:
    """A corpus with its splits, optional per-split hard negatives and optional known answer strings per query."""

    name: str
    corpus: dict[str, Passage]
    splits: dict[str, RetrievalSplit]
    hard_negatives: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    answers: dict[str, list[str]] = field(default_factory=dict)
    fingerprint: str = ""  # loaders set it from the files read and the options used (cache key of artifacts)

    def split(self, name: str) -> RetrievalSplit:
        if name not in self.splits:
            raise KeyError(f"dataset '{self.name}' has no split '{name}'; available: {sorted(self.splits)}")
        return self.splits[name]
