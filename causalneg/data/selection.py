"""Which queries a run uses. Mining, generation and training all read one :class:`Selection`, built once per
split by the stages (:func:`causalneg.stages.specs.selection`), so every arm of a study trains on the same queries."""

from __future__ import annotations

import random
from dataclasses import dataclass

from causalneg.artifacts import fingerprint
from causalneg.records import RetrievalSplit


def select_query_ids(split: RetrievalSplit, limit: int | None = None, seed: int = 0) -> list[str]:
    """Query ids with at least one positive, sorted; if ``limit`` is set, a seeded sample of that many (sorted).

    The sample depends only on (the split's judged query ids, limit, seed): never on global RNG state.
    """
    ids = sorted(qid for qid in split.queries if split.positives(qid))
    if limit is None or limit >= len(ids):
        return ids
    if limit <= 0:
        raise ValueError(f"limit must be positive or None, got {limit}")
    rng = random.Random(fingerprint({"ids": ids, "seed": seed}))
    return sorted(rng.sample(ids, limit))


@dataclass(frozen=True)
class Selection:
    """The queries of one split that a run uses: ``select_query_ids(split, limit, seed)``, with its inputs."""

    split: str
    limit: int | None
    seed: int
    query_ids: tuple[str, ...]

    @classmethod
    def of(cls, data: RetrievalSplit, split: str, limit: int | None, seed: int) -> Selection:
        return cls(split, limit, seed, tuple(select_query_ids(data, limit, seed)))

    @property
    def fingerprint(self) -> str:
        """The hash of the selected ids (what artifact manifests record as ``query_ids``)."""
        return fingerprint(list(self.query_ids))
