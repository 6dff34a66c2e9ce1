"""Exact maximum-inner-product search: chunked matmul in torch, or faiss ``IndexFlatIP`` when installed.

With L2-normalised embeddings the inner product is the cosine similarity. Both functions return the top-k
scores and document row indices per query, best first. Ties at the k-th score may be cut either way.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from causalneg.errors import MissingDependencyError

FAISS_AVAILABLE = importlib.util.find_spec("faiss") is not None


def exact_topk(
    query_emb: torch.Tensor,
    doc_emb: torch.Tensor,
    k: int,
    chunk_size: int = 16384,
    query_chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k documents per query by inner product.

    Args:
        query_emb: ``[Q, D]``; doc_emb: ``[N, D]`` (same dtype); k: clamped to N.
        chunk_size: documents scored at once; query_chunk_size: queries at once
            (memory about ``query_chunk_size x (chunk_size + 2k)`` scores).

    Returns:
        ``(scores [Q, k], indices [Q, k])``, scores descending, indices into ``doc_emb`` rows (int64).

    A running top-k is merged with each document chunk's top-k: ``topk(cat(best, topk(q d_chunk^T)))``.
    """
    if query_emb.dim() != 2 or doc_emb.dim() != 2 or query_emb.size(1) != doc_emb.size(1):
        raise ValueError(
            f"expected [Q, D] and [N, D], got {tuple(query_emb.shape)} and {tuple(doc_emb.shape)}"
        )
    n_queries, n_docs = query_emb.size(0), doc_emb.size(0)
    k = min(k, n_docs)
    scores_out = torch.empty((n_queries, k), dtype=query_emb.dtype)
    index_out = torch.empty((n_queries, k), dtype=torch.long)
    for q_start in range(0, n_queries, query_chunk_size):
        queries = query_emb[q_start : q_start + query_chunk_size]  # [qc, D]
        best_scores = torch.empty((queries.size(0), 0), dtype=query_emb.dtype)
        best_index = torch.empty((queries.size(0), 0), dtype=torch.long)
        for d_start in range(0, n_docs, chunk_size):
            chunk_scores = queries @ doc_emb[d_start : d_start + chunk_size].T  # [qc, c]
            top_scores, top_index = chunk_scores.topk(min(k, chunk_scores.size(1)), dim=1)
            merged_scores = torch.cat([best_scores, top_scores], dim=1)  # [qc, <= 2k]
            merged_index = torch.cat([best_index, top_index + d_start], dim=1)
            best_scores, position = merged_scores.topk(min(k, merged_scores.size(1)), dim=1)
            best_index = merged_index.gather(1, position)
        scores_out[q_start : q_start + queries.size(0)] = best_scores
        index_out[q_start : q_start + queries.size(0)] = best_index
    return scores_out, index_out


def faiss_topk(query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`exact_topk` through ``faiss.IndexFlatIP`` (exact; float32)."""
    if not FAISS_AVAILABLE:
        raise MissingDependencyError("faiss-cpu", hint="or use exact_topk, which needs only torch")
    import faiss

    k = min(k, doc_emb.size(0))
    index = faiss.IndexFlatIP(doc_emb.size(1))
    index.add(np.ascontiguousarray(doc_emb.detach().float().cpu().numpy()))
    scores, indices = index.search(np.ascontiguousarray(query_emb.detach().float().cpu().numpy()), k)
    return torch.from_numpy(scores), torch.from_numpy(indices.astype(np.int64))
