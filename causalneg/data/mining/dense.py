"""Dense mining: encode the corpus (``Passage.full_text``, document side) and the queries with the dual
encoder, exact inner-product top-k (cosine for L2-normalised embeddings), and the score of every positive.

The corpus embeddings go through the same :class:`EmbeddingCache` key as evaluation, so mining with the
starting encoder and evaluating it encode the corpus once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from causalneg.data.mining.filters import RankedCandidates
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.encoding import encode_texts
from causalneg.evaluation.retrieval import encode_corpus
from causalneg.evaluation.search import exact_topk
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
) -> list[RankedCandidates]:
    """Dense candidates for ``query_ids`` of ``split``: the top ``top_k + max #positives`` passages by
    ``s(q, d) = <e_q(q), e_d(d)>`` (so at least ``top_k`` non-positives remain after the filters drop the
    positives), plus ``s(q, p)`` for every positive ``p``. Queries are not cached (they are few)."""
    data = dataset.split(split)
    positives = [tuple(data.positives(qid)) for qid in query_ids]
    if not query_ids:
        return []
    doc_ids, doc_emb = encode_corpus(encoder, dataset, None, batch_size, precision, cache, progress)  # [N, D]
    position = {pid: i for i, pid in enumerate(doc_ids)}
    texts = [data.queries[qid].text for qid in query_ids]
    query_emb = encode_texts(encoder, texts, "query", batch_size, precision, progress)  # [Q, D]
    k = top_k + max(len(p) for p in positives)
    scores, indices = exact_topk(query_emb, doc_emb, k, chunk_size=chunk_size)  # [Q, k] each
    results = []
    for row, (qid, pos) in enumerate(zip(query_ids, positives, strict=True)):
        candidates = tuple(
            (doc_ids[int(i)], float(s))
            for s, i in zip(scores[row].tolist(), indices[row].tolist(), strict=True)
        )
        pos_rows = torch.tensor([position[p] for p in pos if p in position], dtype=torch.long)
        pos_scores = (doc_emb[pos_rows] @ query_emb[row]).tolist() if len(pos_rows) else []  # [P]
        kept = [p for p in pos if p in position]
        results.append(RankedCandidates(qid, pos, candidates, dict(zip(kept, pos_scores, strict=True))))
    return results
