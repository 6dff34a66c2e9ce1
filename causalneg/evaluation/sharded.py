"""Sharded corpus encoding and search across ranks, with an exact merge of the per-shard top-k.

The corpus (``N`` texts, in a fixed order) is cut into ``S = max(ceil(N / shard_size), world)`` contiguous
shards (:func:`shard_bounds`); shard ``i`` belongs to rank ``i mod world``. Each rank

1. encodes its slice of the queries; the query matrix ``[Q, D]`` is all-gathered (queries are few);
2. for each of its shards: takes the embeddings from the cache or encodes them and stores them at once
   (key = the whole corpus's key + the shard's ``[start, stop)``; :func:`shard_key`), searches the shard
   (:mod:`causalneg.evaluation.index`) and keeps its top-k with global row indices; the shard's vectors are
   then dropped, so no rank ever holds more than one shard;
3. all-gathers every rank's top-k and merges them (:func:`merge_topk`).

Exactness: with an exact index, the top-k of a union is the top-k of the union of the per-shard top-k lists,
so the merge equals one search over the whole corpus. Ties are broken by the lower global row (the merge is a
stable sort on (score desc, row asc)). A killed job resumes shard by shard: finished shards are cache hits.
With one shard the key is exactly the unsharded key, so mining, diagnostics and evaluation keep sharing it.

Without an initialised ``torch.distributed`` process group this runs the same code with ``world = 1``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from causalneg.artifacts import fingerprint
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.encoding import _cache_key, canonical_precision, encode_texts_with_stats
from causalneg.evaluation.index import IndexConfig, search_shard
from causalneg.losses.distributed import world
from causalneg.models.encoder import DualEncoder, Side


def shard_bounds(n: int, shard_size: int | None, world_size: int = 1) -> list[tuple[int, int]]:
    """``S = max(ceil(n / shard_size), world_size)`` contiguous ``[start, stop)`` ranges covering ``0..n``.

    Sizes differ by at most one (the first ``n mod S`` shards get the extra row). ``shard_size`` None or 0
    means one shard per rank. Empty ranges are dropped (``n < world_size``).
    """
    if n < 0 or world_size < 1:
        raise ValueError(f"need n >= 0 and world_size >= 1, got n={n}, world_size={world_size}")
    if shard_size is not None and shard_size < 0:
        raise ValueError(f"shard_size must be positive (or 0/None for one shard per rank), got {shard_size}")
    count = max(math.ceil(n / shard_size) if shard_size else 1, world_size)
    base, extra = divmod(n, count)
    bounds, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


def shard_key(key: str, inputs: dict[str, Any], start: int, stop: int, n: int) -> tuple[str, dict[str, Any]]:
    """Cache key of rows ``[start, stop)`` of the texts whose whole-list key is ``(key, inputs)``.

    The whole list (``start == 0 and stop == n``) keeps the unsharded key itself.
    """
    if start == 0 and stop == n:
        return key, inputs
    sharded = {**inputs, "shard": [int(start), int(stop)], "of": int(n)}
    return fingerprint(sharded), sharded


def encode_shard(
    encoder: DualEncoder,
    texts: Sequence[str],
    side: Side,
    bounds: tuple[int, int],
    batch_size: int,
    precision: str,
    cache: EmbeddingCache | None,
    whole_key: tuple[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, float, bool]:
    """Rows ``bounds`` of ``texts`` encoded (or read from the cache): ``([stop - start, D], seconds, hit)``."""
    start, stop = bounds
    began = time.perf_counter()
    key: str = ""
    inputs: dict[str, Any] = {}
    if cache is not None:
        key, inputs = shard_key(
            *(whole_key or _cache_key(encoder, texts, side, precision)), start, stop, len(texts)
        )
        cached = cache.get(key)
        if cached is not None and cached.shape == (stop - start, encoder.embedding_dim):
            return cached, time.perf_counter() - began, True
    embeddings, _ = encode_texts_with_stats(encoder, texts[start:stop], side, batch_size, precision, progress)
    if cache is not None:
        cache.put(key, embeddings, inputs)
    return embeddings, time.perf_counter() - began, False


def merge_topk(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact merge of per-shard ``(scores [Q, k_i], global rows [Q, k_i])`` into the top ``k`` per query.

    Order: score descending, then row ascending (a stable sort), so the result does not depend on the order of
    ``parts``. ``-inf`` entries (padding of an approximate index) sort last and are cut when possible.
    """
    scores = torch.cat([s for s, _ in parts], dim=1)  # [Q, sum k_i]
    rows = torch.cat([r for _, r in parts], dim=1)
    by_row = rows.argsort(dim=1, stable=True)
    scores, rows = scores.gather(1, by_row), rows.gather(1, by_row)
    by_score = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, by_score), rows.gather(1, by_score)


@dataclass
class ShardedSearchResult:
    """``scores, rows [Q, k]`` (rows index the corpus order), what each rank encoded (``rank_stats``), and
    ``row_scores[q][row]``: the score of every requested ``score_rows[q]`` pair (e.g. a query's positives)."""

    scores: torch.Tensor
    rows: torch.Tensor
    rank_stats: list[dict[str, Any]] = field(default_factory=list)
    row_scores: list[dict[int, float]] = field(default_factory=list)


def _all_gather(obj: Any, size: int) -> list[Any]:
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def _encode_queries(
    encoder: DualEncoder, texts: Sequence[str], batch_size: int, precision: str, rank: int, size: int
) -> torch.Tensor:
    """Every rank encodes a contiguous slice of the queries; the ``[Q, D]`` matrix is gathered to all."""
    bounds = shard_bounds(len(texts), None, size)
    mine = [b for i, b in enumerate(bounds) if i % size == rank]
    local = [
        encode_texts_with_stats(encoder, texts[a:b], "query", batch_size, precision, False)[0]
        for a, b in mine
    ]
    gathered = [
        t for part in _all_gather(local, size) for t in part
    ]  # rank order = slice order (one slice each)
    return torch.cat(gathered) if gathered else torch.empty((0, encoder.embedding_dim))


def sharded_search(
    encoder: DualEncoder,
    query_texts: Sequence[str],
    doc_texts: Sequence[str],
    k: int,
    batch_size: int = 128,
    precision: str = "32-true",
    cache: EmbeddingCache | None = None,
    shard_size: int | None = None,
    index: IndexConfig | None = None,
    after_shard: Callable[[int], None] | None = None,
    distributed: bool = True,
    progress: bool = False,
    score_rows: Sequence[Sequence[int]] | None = None,
) -> ShardedSearchResult:
    """Top ``k`` documents of ``doc_texts`` for every query, the corpus split over ranks (module docstring).

    With ``distributed`` and an initialised process group this is a collective: every rank calls it with the
    same arguments; otherwise the whole corpus is this process's (``world = 1``). ``after_shard(i)`` runs
    after shard ``i`` is encoded and cached (progress reporting; the resume test kills the job there).
    ``score_rows[q]``: corpus rows whose score ``<e_q, e_d>`` query ``q`` also needs (computed by the rank
    that holds the row's shard, gathered into ``row_scores``).
    """
    canonical = canonical_precision(precision)
    index = index or IndexConfig()
    rank, size = world() if distributed else (0, 1)
    device = next(encoder.parameters()).device  # exact search runs where the encoder runs (a GPU rank's GPU)
    query_emb = _encode_queries(encoder, query_texts, batch_size, canonical, rank, size)  # [Q, D]
    whole_key = _cache_key(encoder, doc_texts, "doc", canonical) if cache is not None else None
    bounds = shard_bounds(len(doc_texts), shard_size, size)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    pair_scores: list[tuple[int, int, float]] = []  # (query, row, score) for the requested rows in my shards
    pair_queries = torch.tensor(
        [q for q, rows in enumerate(score_rows or ()) for _ in rows], dtype=torch.long
    )
    pair_rows = torch.tensor([r for rows in score_rows or () for r in rows], dtype=torch.long)
    encoded, seconds, hits = 0, 0.0, 0
    for i, (start, stop) in enumerate(bounds):
        if i % size != rank:
            continue
        doc_emb, took, hit = encode_shard(
            encoder, doc_texts, "doc", (start, stop), batch_size, canonical, cache, whole_key, progress
        )
        hits += int(hit)
        if not hit:
            encoded, seconds = encoded + (stop - start), seconds + took
        if after_shard is not None:
            after_shard(i)
        scores, rows = search_shard(
            query_emb.to(device), doc_emb.to(device), k, index
        )  # on the rank's device
        parts.append((scores.cpu(), rows.cpu() + start))
        if pair_rows.numel():
            inside = (pair_rows >= start) & (pair_rows < stop)
            q_in, rows_in = pair_queries[inside], pair_rows[inside]
            values = (doc_emb[rows_in - start] * query_emb[q_in]).sum(dim=1)  # [P_shard]
            pair_scores += zip(q_in.tolist(), rows_in.tolist(), values.tolist(), strict=True)
    empty = (torch.empty((len(query_texts), 0)), torch.empty((len(query_texts), 0), dtype=torch.long))
    local = merge_topk(parts, k) if parts else empty
    stats = {
        "rank": rank,
        "shards": sum(1 for i in range(len(bounds)) if i % size == rank),
        "cache_hits": hits,
        "passages_encoded": encoded,
        "encode_seconds": seconds,
        "passages_per_second": encoded / seconds if seconds > 0 else 0.0,
    }
    gathered = _all_gather((local, stats, pair_scores), size)
    scores, rows = merge_topk([part for part, _, _ in gathered], min(k, len(doc_texts)))
    row_scores: list[dict[int, float]] = (
        [{} for _ in range(len(query_texts))] if score_rows is not None else []
    )
    for _, _, pairs in gathered:
        for q, row, score in pairs:
            row_scores[q][row] = score
    return ShardedSearchResult(scores, rows, [s for _, s, _ in gathered], row_scores)
