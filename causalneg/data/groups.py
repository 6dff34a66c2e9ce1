"""Training groups: a query, one positive and negatives drawn per source, sampled deterministically.

Every draw is a function of (seed, query id, epoch) through a private ``random.Random`` seeded with a stable
hash, so the same config gives the same groups in any process, worker or rank, and nothing touches global
RNG state.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from causalneg.artifacts import fingerprint
from causalneg.errors import ConfigError
from causalneg.records import Negative, NegativeSource, Passage, Query, RetrievalDataset, TrainingGroup

POSITIVE_MODES = ("one", "pairs", "multi")


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
    # random: a seeded positive per epoch among the judged ones; first: always the first (best grade, then id).
    positive_selection: str = "random"
    # one: one positive per group | pairs: one group per (query, positive) pair, as sentence-transformers'
    # rows are | multi: one group per query with up to max_positives positives (multi-positive InfoNCE).
    positives: str = "one"
    max_positives: int = 4  # multi: positives per group, the selected one included (extra slots: this - 1)
    min_grade: int = 1  # a judged passage is a training positive from this qrels grade on
    # A training query that kept fewer mined candidates than this is left out (0 = keep every query), as
    # sentence-transformers' ``mine_hard_negatives`` drops a row with fewer than its ``num_negatives``.
    min_mined: int = 0

    def __post_init__(self) -> None:
        if self.positives not in POSITIVE_MODES:
            raise ConfigError(f"data.positives must be one of {POSITIVE_MODES}, got {self.positives!r}")
        if self.max_positives < 1 or self.min_grade < 1:
            raise ConfigError(
                f"data.max_positives and data.min_grade must be >= 1, got {self.max_positives}, {self.min_grade}"
            )
        self._check_counts()

    def _check_counts(self) -> None:
        if min(self.num_mined, self.num_generated, self.num_random, self.min_mined) < 0:
            raise ConfigError(f"negative counts must be >= 0, got {self}")
        if self.mined_selection not in ("random", "hardest"):
            raise ConfigError(f"data.mined_selection must be random or hardest, got {self.mined_selection!r}")
        if self.positive_selection not in ("random", "first"):
            raise ConfigError(
                f"data.positive_selection must be random or first, got {self.positive_selection!r}"
            )
        if self.negative_slots == 0:
            raise ConfigError(
                "a training group needs at least one negative (data.num_mined/num_generated/num_random)"
            )

    @property
    def negative_slots(self) -> int:
        return self.num_mined + self.num_generated + self.num_random

    @property
    def extra_positive_slots(self) -> int:
        """Slots after the negatives that hold a multi-positive group's other positives (0 unless multi)."""
        return self.max_positives - 1 if self.positives == "multi" else 0

    @property
    def total(self) -> int:
        """Slots per group in a batch: the negatives, then the extra positives."""
        return self.negative_slots + self.extra_positive_slots


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
    min_grade: int = 1,
) -> list[QueryPool]:
    """One pool per query id: positives from the qrels, mined candidates resolved to corpus text.

    Positives are the judged passages of grade >= ``min_grade`` that are in the corpus, best grade first, then
    by id (with one grade: by id). Every passage of grade > 0 stays in ``judged_ids`` for masking, and none of
    them is ever a mined negative. A query without a positive of that grade gets no pool."""
    judged = dataset.split(split)
    pools = []
    for qid in query_ids:
        grades = judged.qrels.get(qid, {})
        ranked = sorted(judged.positives(qid), key=lambda pid: -grades[pid])  # stable: ids stay sorted
        positives = tuple(
            dataset.corpus[pid] for pid in ranked if pid in dataset.corpus and grades[pid] >= min_grade
        )
        if not positives:
            continue
        pos_ids = set(ranked)  # no judged positive, of any grade >= 1, is a negative
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


def expand_pairs(pools: Sequence[QueryPool]) -> list[QueryPool]:
    """``data.positives=pairs``: one pool per (query, positive), each with the query's negatives and judged ids
    (so in-batch masking still knows every positive of the query)."""
    return [
        replace(
            pool, positives=(positive,), judged_ids=pool.judged_ids or tuple(p.id for p in pool.positives)
        )
        for pool in pools
        for positive in pool.positives
    ]


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
    extra = [p for p in pool.positives if p.id != positive.id][
        : spec.extra_positive_slots
    ]  # best grade first
    return TrainingGroup(
        query=pool.query,
        positive=positive,
        negatives=tuple(negatives),
        judged_ids=judged,
        extra_positives=tuple(extra),
    )
