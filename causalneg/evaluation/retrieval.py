"""Dense retrieval evaluation: encode queries and corpus, exact top-k search, trec_eval-style metrics.

The corpus is encoded in ``dataset.corpus`` order (or the order of ``corpus_ids``) through
:func:`encode_corpus`, which mining and diagnostics call too, so they all share one embedding-cache entry.
For fast validation during training, :func:`dev_subcorpus_ids` builds a fixed sub-corpus: the split's judged
positives, the given extra ids (e.g. mined negatives) and a seeded random sample of other passages.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from causalneg.artifacts import fingerprint
from causalneg.contracts import METRICS
from causalneg.errors import DataError
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.encoding import encode_texts_with_stats
from causalneg.evaluation.index import IndexConfig
from causalneg.evaluation.metrics import evaluate_run
from causalneg.evaluation.sharded import sharded_search
from causalneg.models.encoder import DualEncoder
from causalneg.records import RetrievalDataset


@dataclass
class RetrievalResult:
    """``metrics[name]`` (means), ``per_query[name][qid]``, ``run[qid][doc_id] = score`` and ``stats``."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: dict[str, dict[str, float]]
    stats: dict[str, Any] = field(default_factory=dict)


def encode_corpus(
    encoder: DualEncoder,
    dataset: RetrievalDataset,
    corpus_ids: Sequence[str] | None = None,
    batch_size: int = 128,
    precision: str = "32-true",
    cache: EmbeddingCache | None = None,
    progress: bool = False,
) -> tuple[list[str], torch.Tensor]:
    """``(ids, embeddings [N, D])`` of ``Passage.full_text`` (doc side); corpus order by default."""
    ids = list(dataset.corpus) if corpus_ids is None else list(corpus_ids)
    unknown = [pid for pid in ids if pid not in dataset.corpus]
    if unknown:
        raise DataError(f"{len(unknown)} corpus ids are not in dataset '{dataset.name}', e.g. {unknown[:3]}")
    texts = [dataset.corpus[pid].full_text for pid in ids]
    embeddings, _ = encode_texts_with_stats(encoder, texts, "doc", batch_size, precision, progress, cache)
    return ids, embeddings


def dev_subcorpus_ids(
    dataset: RetrievalDataset,
    split: str,
    n_random: int,
    seed: int = 0,
    extra_ids: Iterable[str] = (),
) -> list[str]:
    """Sorted ids: every judged passage of ``split`` + ``extra_ids`` + ``n_random`` seeded other passages.

    The sample depends only on (the fixed ids, the corpus ids, n_random, seed), never on global RNG state.
    """
    judged = {pid for rels in dataset.split(split).qrels.values() for pid in rels}
    fixed = sorted((judged | set(extra_ids)) & dataset.corpus.keys())
    fixed_set = set(fixed)
    others = sorted(pid for pid in dataset.corpus if pid not in fixed_set)
    rng = random.Random(fingerprint({"fixed": fingerprint(fixed), "n": n_random, "seed": seed}))
    sample = rng.sample(others, min(max(n_random, 0), len(others)))
    return sorted(fixed_set | set(sample))


def run_from_topk(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: torch.Tensor, indices: torch.Tensor, k: int
) -> dict[str, dict[str, float]]:
    """``scores, indices [Q, k']`` -> ``run[qid][doc_id]``, top k without self-hits (doc id == query id)."""
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(query_ids):
        hits: dict[str, float] = {}
        for score, index in zip(scores[row].tolist(), indices[row].tolist(), strict=True):
            if score == float("-inf"):  # padding of an approximate index that found fewer than k
                break
            doc_id = doc_ids[index]
            if doc_id != qid:
                hits[doc_id] = float(score)
            if len(hits) == k:
                break
        run[qid] = hits
    return run


def evaluate_retrieval(
    encoder: DualEncoder,
    dataset: RetrievalDataset,
    split: str,
    k: int = 100,
    batch_size: int = 128,
    precision: str = "32-true",
    cache: EmbeddingCache | None = None,
    corpus_ids: Sequence[str] | None = None,
    progress: bool = False,
    shard_size: int | None = None,
    index: IndexConfig | None = None,
    distributed: bool = False,
) -> RetrievalResult:
    """Retrieve the top ``k`` passages for every judged query of ``split`` and score them.

    Queries = those of ``split.qrels`` with a relevant judgment; they must have text in ``split.queries``.
    Metrics: ``ndcg@10, recall@10, recall@100, mrr@10`` (see :mod:`causalneg.evaluation.metrics`); with a
    sub-corpus (``corpus_ids``) positives outside it count as not retrieved.

    Search goes through :func:`causalneg.evaluation.sharded.sharded_search`: ``shard_size`` passages per
    cache entry (None: one shard per rank, the unsharded cache key in one process), ``index`` the per-shard
    index (default exact). With ``distributed`` and an initialised process group, every rank must call this
    and each encodes its shards; ``stats["ranks"]`` has each rank's encoding throughput.
    """
    data = dataset.split(split)
    query_ids = sorted(qid for qid, rels in data.qrels.items() if any(rel >= 1 for rel in rels.values()))
    missing = [qid for qid in query_ids if qid not in data.queries]
    if missing:
        raise DataError(
            f"split '{split}' of '{dataset.name}' judges {len(missing)} queries without text: {missing[:3]}"
        )
    query_texts = [data.queries[qid].text for qid in query_ids]
    cut = encoder.count_truncated(query_texts, "query")
    if cut:  # a set whose queries are passages (Semanlink: title + abstract) loses most of each query here
        print(
            f"[causalneg] {cut} of {len(query_texts)} queries of '{dataset.name}' split '{split}' are longer than "
            f"model.query_max_length={encoder.max_length('query')} tokens and are cut; where queries are "
            "passages, raise it (e.g. model.query_max_length=256)",
            flush=True,
        )
    doc_ids = list(dataset.corpus) if corpus_ids is None else list(corpus_ids)
    unknown = [pid for pid in doc_ids if pid not in dataset.corpus]
    if unknown:
        raise DataError(f"{len(unknown)} corpus ids are not in dataset '{dataset.name}', e.g. {unknown[:3]}")
    doc_texts = [dataset.corpus[pid].full_text for pid in doc_ids]
    self_hits = any(qid in dataset.corpus for qid in query_ids)
    started = time.perf_counter()
    found = sharded_search(
        encoder,
        query_texts,
        doc_texts,
        k + 1 if self_hits else k,
        batch_size,
        precision,
        cache,
        shard_size,
        index,
        distributed=distributed,
        progress=progress,
    )
    run = run_from_topk(query_ids, doc_ids, found.scores, found.rows, k)
    k_values = sorted({int(name.split("@")[1]) for name in METRICS})
    aggregate, per_query = evaluate_run(data.qrels, run, k_values)
    metrics = {name: aggregate.get(name, 0.0) for name in METRICS}
    stats = {
        "n_queries": len(query_ids),
        "n_docs": len(doc_ids),
        "queries_truncated": cut,
        "seconds": time.perf_counter() - started,
        "ranks": found.rank_stats,
    }
    return RetrievalResult(metrics, {name: per_query[name] for name in METRICS}, run, stats)
