"""A seeded, smaller copy of a BEIR data set, for studies that must fit a small machine.

Every split keeps a seeded sample of its queries (:func:`causalneg.data.selection.select_query_ids`, the same
sample the DataModule, the miner and the generator draw); the corpus keeps every passage those queries judge or
list as a hard negative, plus a seeded sample of ``random_passages`` others. Mining, training and evaluation then
all run on that corpus, so every arm of a study sees the same, complete test split over the same candidates.
Absolute numbers are higher than on the full corpus (fewer distractors); comparisons between arms are fair.

Use it as the dataset's ``_target_``, e.g.::

    dataset=hotpotqa dataset._target_=causalneg.data.sources.subsample.load_beir_subsample \
        +dataset.train_queries=64 +dataset.test_queries=200 +dataset.random_passages=1000
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

from causalneg.artifacts import fingerprint
from causalneg.data.selection import select_query_ids
from causalneg.data.sources.beir import load_beir
from causalneg.errors import ConfigError
from causalneg.records import RetrievalDataset, RetrievalSplit

log = logging.getLogger(__name__)


def subsample_dataset(
    dataset: RetrievalDataset,
    queries_per_split: dict[str, int | None],
    random_passages: int,
    seed: int = 0,
) -> RetrievalDataset:
    """Return a new dataset restricted as described in the module docstring.

    Args:
        dataset: the full data set (not modified).
        queries_per_split: split name -> queries to keep (``None`` keeps all); splits not named keep all.
        random_passages: passages kept besides the judged and hard-negative ones of the kept queries.
        seed: seed of both samples (queries: :func:`select_query_ids` with this seed).
    """
    if random_passages < 0:
        raise ConfigError(f"random_passages must be >= 0, got {random_passages}")
    unknown = sorted(set(queries_per_split) - set(dataset.splits))
    if unknown:
        raise ConfigError(
            f"subsample names splits {unknown} that '{dataset.name}' lacks: {sorted(dataset.splits)}"
        )
    splits: dict[str, RetrievalSplit] = {}
    for name, split in dataset.splits.items():
        kept = select_query_ids(split, queries_per_split.get(name), seed)
        splits[name] = RetrievalSplit(
            queries={qid: split.queries[qid] for qid in kept},
            qrels={qid: split.qrels[qid] for qid in kept if qid in split.qrels},
        )
    hard_negatives = {
        name: {qid: pids for qid, pids in per_query.items() if qid in splits[name].queries}
        for name, per_query in dataset.hard_negatives.items()
        if name in splits
    }
    keep = {pid for s in splits.values() for judged in s.qrels.values() for pid in judged}
    keep |= {pid for per_query in hard_negatives.values() for pids in per_query.values() for pid in pids}
    keep &= dataset.corpus.keys()
    others = sorted(pid for pid in dataset.corpus if pid not in keep)
    rng = random.Random(fingerprint(["subsample-corpus", seed, random_passages]))
    keep.update(rng.sample(others, min(random_passages, len(others))))
    options = {"queries": dict(sorted(queries_per_split.items())), "random": random_passages, "seed": seed}
    return RetrievalDataset(
        name=dataset.name,
        corpus={pid: p for pid, p in dataset.corpus.items() if pid in keep},
        splits=splits,
        hard_negatives=hard_negatives,
        answers={
            qid: a for qid, a in dataset.answers.items() if any(qid in s.queries for s in splits.values())
        },
        fingerprint=fingerprint([dataset.fingerprint, "subsample", options]),
    )


def load_beir_subsample(
    train_queries: int | None = None,
    dev_queries: int | None = None,
    test_queries: int | None = None,
    random_passages: int = 1000,
    subsample_seed: int = 0,
    **beir: Any,
) -> RetrievalDataset:
    """:func:`causalneg.data.sources.beir.load_beir` (``**beir``), then :func:`subsample_dataset` with
    ``train_queries`` / ``dev_queries`` / ``test_queries`` for the configured train / dev / test splits."""
    full = load_beir(**beir)
    defaults = {"train_split": "train", "dev_split": None, "test_split": "test"}  # load_beir's
    limits = _split_limits(full, beir, defaults, (train_queries, dev_queries, test_queries))
    return _subsample_logged(full, limits, random_passages, subsample_seed)


def load_semanlink_subsample(
    train_queries: int | None = None,
    dev_queries: int | None = None,
    test_queries: int | None = None,
    random_passages: int = 1000,
    subsample_seed: int = 0,
    **semanlink: Any,
) -> RetrievalDataset:
    """:func:`causalneg.data.sources.semanlink.load_semanlink` (``**semanlink``), then :func:`subsample_dataset`
    as :func:`load_beir_subsample` does (smoke runs and quick checks on the embedded set)."""
    from causalneg.data.sources.semanlink import load_semanlink

    full = load_semanlink(**semanlink)
    defaults = {"train_split": "train", "dev_split": "dev", "test_split": "test"}  # load_semanlink's
    limits = _split_limits(full, semanlink, defaults, (train_queries, dev_queries, test_queries))
    return _subsample_logged(full, limits, random_passages, subsample_seed)


def _split_limits(
    full: RetrievalDataset,
    options: dict[str, Any],
    defaults: Mapping[str, str | None],
    limits: tuple[int | None, int | None, int | None],
) -> dict[str, int | None]:
    """``{split name: query limit}`` for the loader's train / dev / test splits that ``full`` has."""
    out: dict[str, int | None] = {}
    for key, limit in zip(("train_split", "dev_split", "test_split"), limits, strict=True):
        split = options.get(key, defaults[key])
        if split is not None and split in full.splits:
            out[str(split)] = limit
    return out


def _subsample_logged(
    full: RetrievalDataset, limits: dict[str, int | None], random_passages: int, seed: int
) -> RetrievalDataset:
    small = subsample_dataset(full, limits, random_passages, seed)
    log.info(
        "subsampled %s: %d of %d passages; queries %s",
        small.name,
        len(small.corpus),
        len(full.corpus),
        {name: len(s.queries) for name, s in small.splits.items()},
    )
    return small
