"""Dataset sources. Each loader returns a :class:`causalneg.records.RetrievalDataset`:

- :func:`causalneg.data.sources.beir.load_beir`: any BEIR-layout folder (the ``beir`` config group entry);
- :func:`causalneg.data.sources.semanlink.load_semanlink`: the embedded default (``cherche==2.2.1`` sdist);
- :func:`causalneg.data.sources.hf.load_hf_beir`: ``BeIR/*`` on the Hugging Face hub (needs ``datasets``);
- :func:`causalneg.data.sources.ir_datasets.load_ir_datasets`: an ``ir_datasets`` id (needs ``ir_datasets``).

This module holds the split helpers they share (no loader is imported here, so importing it is cheap).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from causalneg.artifacts import fingerprint
from causalneg.errors import ConfigError
from causalneg.records import Passage, Query, RetrievalSplit


def build_split(queries: Mapping[str, Query], qrels: dict[str, dict[str, int]]) -> RetrievalSplit:
    """The split's queries are those that have judgments (BEIR's convention), in qrels order."""
    return RetrievalSplit(queries={qid: queries[qid] for qid in qrels}, qrels=qrels)


def carve_dev(train: RetrievalSplit, n: int, seed: int) -> tuple[RetrievalSplit, RetrievalSplit]:
    """Move a seeded sample of ``n`` judged-positive train queries into a new dev split.

    The sample depends only on (sorted train query ids, n, seed), never on global RNG state; the salt
    ``"dev"`` keeps it independent of :func:`causalneg.data.selection.select_query_ids` on the same ids.
    Returns ``(train_without_dev, dev)``.
    """
    ids = sorted(qid for qid in train.queries if train.positives(qid))
    if not 0 < n < len(ids):
        raise ConfigError(
            f"dev_from_train={n} must be between 1 and {len(ids) - 1} "
            f"(the train split has {len(ids)} queries with a positive)"
        )
    rng = random.Random(fingerprint({"ids": ids, "seed": seed, "salt": "dev"}))
    dev_ids = set(rng.sample(ids, n))
    keep = [qid for qid in train.queries if qid not in dev_ids]
    moved = [qid for qid in train.queries if qid in dev_ids]
    rest = RetrievalSplit(
        {q: train.queries[q] for q in keep}, {q: train.qrels[q] for q in keep if q in train.qrels}
    )
    dev = RetrievalSplit({q: train.queries[q] for q in moved}, {q: train.qrels[q] for q in moved})
    return rest, dev


def limit_corpus(
    corpus: dict[str, Passage], max_corpus: int | None, required: set[str]
) -> dict[str, Passage]:
    """Keep every ``required`` passage (judged or listed as a hard negative) and fill up to ``max_corpus``
    with the others in file order (deterministic). ``None`` keeps everything. The result may exceed
    ``max_corpus`` when more passages are required than it allows."""
    if max_corpus is None or max_corpus >= len(corpus):
        return corpus
    if max_corpus <= 0:
        raise ConfigError(f"max_corpus must be positive or null, got {max_corpus}")
    room = max(0, max_corpus - len(required))
    kept: dict[str, Passage] = {}
    for pid, passage in corpus.items():
        if pid in required:
            kept[pid] = passage
        elif room > 0:
            kept[pid] = passage
            room -= 1
    return kept


def requested_splits(
    train_split: str | None, dev_split: str | None, test_split: str | None, dev_from_train: int
) -> list[str]:
    """The split names to read from the source: train, test, and dev unless it is carved out of train."""
    if dev_from_train and (dev_split is None or train_split is None):
        raise ConfigError("dev_from_train > 0 needs train_split and dev_split (the name of the carved split)")
    names = [s for s in (train_split, test_split) if s is not None]
    if dev_split is not None and not dev_from_train:
        names.append(dev_split)
    return list(dict.fromkeys(names))


def with_carved_dev(
    splits: dict[str, RetrievalSplit],
    train_split: str | None,
    dev_split: str | None,
    dev_from_train: int,
    seed: int,
) -> dict[str, RetrievalSplit]:
    """``splits`` with ``dev_split`` carved out of ``train_split`` when ``dev_from_train > 0``."""
    if not dev_from_train or train_split is None or dev_split is None:
        return splits
    out = dict(splits)
    out[train_split], out[dev_split] = carve_dev(splits[train_split], dev_from_train, seed)
    return out
