"""Dense mining: encode the corpus (``Passage.full_text``, document side) and the queries with the dual
encoder, exact inner-product top-k (cosine for L2-normalised embeddings), and the score of every positive.

The corpus embeddings go through the same :class:`EmbeddingCache` key as evaluation, so mining with the
starting encoder and evaluating it encode the corpus once.
"""

from __future__ import annotations

from collections.abc import Sequence

from causalneg.data.mining.filters import RankedCandidates
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.sharded import sharded_search
from causalneg.models.encoder import DualEncoder
from causalneg.records import RetrievalDataset


def mine_dense(
    dataset: RetrievalDataset,
    split: str,
    query_ids: Sequence[str],
    encoder: DualEncoder,
    top_k: int = 100,
    batch_size: int = 128,
    precision: str = "32-true",
    cache: EmbeddingCache | None = None,
    chunk_size: int = 16384,
    progress: bool = False,
    shard_size: int | None = None,
    distributed: bool = False,
) -> list[RankedCandidates]:
    """Dense candidates for ``query_ids`` of ``split``: the top ``top_k + max #positives`` passages by
    ``s(q, d) = <e_q(q), e_d(d)>`` (so at least ``top_k`` non-positives remain after the filters drop the
    positives), plus ``s(q, p)`` for every positive ``p``. Queries are not cached (they are few).

    The corpus goes through :func:`causalneg.evaluation.sharded.sharded_search` (exact index): ``shard_size``
    passages per cache entry (resume shard by shard), and with ``distributed`` every rank of the initialised
    process group encodes and searches its shards (all ranks must call this; all get the same result).
    ``chunk_size`` is kept for callers; the exact search chunks by its own default."""
    data = dataset.split(split)
    positives = [tuple(data.positives(qid)) for qid in query_ids]
    if not query_ids:
        return []
    doc_ids = list(dataset.corpus)
    position = {pid: i for i, pid in enumerate(doc_ids)}
    doc_texts = [dataset.corpus[pid].full_text for pid in doc_ids]
    texts = [data.queries[qid].text for qid in query_ids]
    k = top_k + max(len(p) for p in positives)
    found = sharded_search(
        encoder,
        texts,
        doc_texts,
        k,
        batch_size,
        precision,
        cache,
        shard_size,
        distributed=distributed,
        progress=progress,
        score_rows=[[position[p] for p in pos if p in position] for pos in positives],
    )
    results = []
    for row, (qid, pos) in enumerate(zip(query_ids, positives, strict=True)):
        candidates = tuple(
            (doc_ids[int(i)], float(s))
            for s, i in zip(found.scores[row].tolist(), found.rows[row].tolist(), strict=True)
        )
        kept = {p: found.row_scores[row][position[p]] for p in pos if p in position}
        results.append(RankedCandidates(qid, pos, candidates, kept))
    return results
