"""Training groups: a query, one positive and negatives drawn per source, sampled deterministically.

Every draw is a function of (seed, query id, epoch) through a private ``random.Random`` seeded with a stable
hash, so the same config gives the same groups in any process, worker or rank, and nothing touches global
RNG state.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from causalneg.artifacts import fingerprint
from causalneg.errors import ConfigError
from causalneg.records import Negative, NegativeSource, Passage, Query, RetrievalDataset, TrainingGroup


@dataclass(frozen=True)
class GroupSpec:
    """How many negatives of each source a group holds. Missing ones become masked slots, not substitutes."""

    num_mined: int = 7
    num_generated: int = 0
    num_random: int = 0
    generated_source: NegativeSource = NegativeSource.GENERATED
    # random: a seeded draw of Nm from the query's kept mined candidates, new every epoch (more variety);
    # hardest: the Nm best-ranked kept candidates every epoch (the usual sentence-transformers recipe).
    mined_selection: str = "random"
    # random: a seeded positive per epoch among the judged ones; first: always the first (sorted by id).
    positive_selection: str = "random"

    def __post_init__(self) -> None:
        if min(self.num_mined, self.num_generated, self.num_random) < 0:
            raise ConfigError(f"negative counts must be >= 0, got {self}")
        if self.mined_selection not in ("random", "hardest"):
            raise ConfigError(f"data.mined_selection must be random or hardest, got {self.mined_selection!r}")
        if self.positive_selection not in ("random", "first"):
            raise ConfigError(
                f"data.positive_selection must be random or first, got {self.positive_selection!r}"
            )
        if self.total == 0:
            raise ConfigError(
                "a training group needs at least one negative (data.num_mined/num_generated/num_random)"
            )

    @property
    def total(self) -> int:
        return self.num_mined + self.num_generated + self.num_random


@dataclass(frozen=True)
class QueryPool:
    """Everything a query's groups are drawn from: its positives and its candidate negatives per source.

    ``judged_ids``: every passage id judged relevant (score > 0) for the query, even where it is not drawn as a
    positive; groups carry it for false-negative masking (empty = the ids of ``positives``)."""

    query: Query
    positives: tuple[Passage, ...]
    mined: tuple[Negative, ...] = ()
    generated: tuple[Negative, ...] = ()
    judged_ids: tuple[str, ...] = ()


def build_pools(
    dataset: RetrievalDataset,
    split: str,
    query_ids: Sequence[str],
    mined: Mapping[str, Sequence[tuple[str, float]]] | None = None,
    generated: Mapping[str, Sequence[Negative]] | None = None,
) -> list[QueryPool]:
    """One pool per query id: positives from the qrels, mined candidates resolved to corpus text."""
    judged = dataset.split(split)
    pools = []
    for qid in query_ids:
        positives = tuple(dataset.corpus[pid] for pid in judged.positives(qid) if pid in dataset.corpus)
        if not positives:
            continue
        pos_ids = {p.id for p in positives}
        mined_negs = tuple(
            Negative(
                text=dataset.corpus[pid].full_text,
                source=NegativeSource.MINED,
                passage_id=pid,
                score=score,
            )
            for pid, score in (mined or {}).get(qid, ())
            if pid in dataset.corpus and pid not in pos_ids
        )
        pools.append(
            QueryPool(
                query=judged.queries[qid],
                positives=positives,
                mined=mined_negs,
                generated=tuple((generated or {}).get(qid, ())),
                judged_ids=tuple(judged.positives(qid)),
            )
        )
    return pools


def hold_out_diagnostic_pools(
    pools: Sequence[QueryPool], n: int, seed: int
) -> tuple[list[QueryPool], list[QueryPool]]:
    """Split the selected training queries into (training pools, held-out diagnostic pools).

    The ``n`` held-out pools are a seeded sample of positions in ``pools`` (the selected training queries in
    their sorted order), drawn by a private ``random.Random`` seeded with ``fingerprint(["diagnostics", seed])``.
    The rule reads only the number of pools: never their negatives. Generation that succeeds for some
    queries only therefore changes neither the held-out queries nor the training queries, and every arm of a
    study (mined-only, naive, CausalNeg) trains on the same queries. Held-out queries without generated
    negatives still count as mined-only groups in the diagnostics. Returns both lists in ``pools`` order.
    """
    n = max(0, min(n, len(pools)))
    if n == 0:
        return list(pools), []
    rng = random.Random(fingerprint(["diagnostics", seed]))
    held = set(rng.sample(range(len(pools)), n))
    return [p for i, p in enumerate(pools) if i not in held], [pools[i] for i in sorted(held)]


def _draw(rng: random.Random, items: Sequence[Negative], k: int) -> list[Negative]:
    return rng.sample(list(items), min(k, len(items)))


def sample_group(
    pool: QueryPool,
    spec: GroupSpec,
    seed: int,
    epoch: int,
    random_pool: Sequence[Passage] = (),
) -> TrainingGroup:
    """Draw one group for ``pool`` at ``epoch``: a positive, then up to Nm mined, Ng generated, Nr random.

    ``pool.mined`` is in the miner's rank order, so ``mined_selection="hardest"`` takes its first Nm."""
    rng = random.Random(fingerprint(["group", seed, pool.query.id, epoch]))
    index = rng.randrange(
        len(pool.positives)
    )  # drawn in both modes: the later draws do not depend on the mode
    positive = pool.positives[0 if spec.positive_selection == "first" else index]
    drawn = _draw(rng, pool.mined, spec.num_mined)
    negatives = list(pool.mined[: spec.num_mined]) if spec.mined_selection == "hardest" else drawn
    generated = [n for n in pool.generated if n.source == spec.generated_source]
    negatives += _draw(rng, generated, spec.num_generated)
    if spec.num_random:
        excluded = {p.id for p in pool.positives}
        candidates = rng.sample(list(random_pool), min(len(random_pool), spec.num_random + len(excluded)))
        negatives += [
            Negative(text=p.full_text, source=NegativeSource.RANDOM, passage_id=p.id)
            for p in candidates
            if p.id not in excluded
        ][: spec.num_random]
    judged = pool.judged_ids or tuple(p.id for p in pool.positives)
    return TrainingGroup(query=pool.query, positive=positive, negatives=tuple(negatives), judged_ids=judged)
