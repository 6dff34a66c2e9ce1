"""Retrieval metrics as pure functions, with trec_eval (pytrec_eval) semantics.

Per query, the run is ranked the way trec_eval ranks it: score descending, ties broken by document id
*descending* (byte order). With ``rel(d)`` the judged relevance (0 when unjudged), ``R = {d : rel(d) >= 1}``
and ``d_1, d_2, ...`` the ranking:

- ``ndcg@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} max(rel(d_i), 0) / log2(i + 1)`` (linear, graded
  gains) and ``IDCG@k`` the same sum over the judged relevance values sorted descending (0 when no gain
  exists); this is trec_eval's ``ndcg_cut.k``.
- ``recall@k = |{d_1..d_k} ∩ R| / |R|`` (trec_eval ``recall.k``).
- ``mrr@k = 1 / min{i <= k : d_i ∈ R}``, 0 if none (trec_eval ``recip_rank`` on the top-k ranking).

Which queries count: a query counts when it has at least one relevant judgment (``rel >= 1``); a query
without one has no defined recall and is skipped (BEIR's files never contain such queries). A counted query
that is missing from the run (or has an empty ranking) scores 0 on every metric and stays in the mean: a
retriever that returns nothing must not look better (pytrec_eval would silently drop it). Queries in the run
but not in the qrels are ignored. Aggregates are means over counted queries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DEFAULT_K_VALUES = (10, 100)
MEASURES = ("ndcg", "recall", "mrr")

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def rank(scores: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then document id descending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def ndcg_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """trec_eval ``ndcg_cut.k``: linear gains ``max(rel, 0)``, discount ``log2(rank + 1)``."""
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]))
    ideal_gains = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal_gains))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (``rel >= 1``) found in the top k."""
    relevant = {doc for doc, rel in judged.items() if rel >= 1}
    if not relevant:
        return 0.0
    return sum(1 for doc in ranking[:k] if doc in relevant) / len(relevant)


def mrr_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top k; 0 if there is none."""
    for i, doc in enumerate(ranking[:k]):
        if judged.get(doc, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


_FUNCTIONS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}


def metric_names(k_values: Sequence[int] = DEFAULT_K_VALUES, measures: Sequence[str] = MEASURES) -> list[str]:
    """``["ndcg@10", "recall@10", "mrr@10", "ndcg@100", ...]`` (measure@k for every k)."""
    for measure in measures:
        if measure not in _FUNCTIONS:
            raise ValueError(f"unknown measure {measure!r}; expected one of {MEASURES}")
    for k in k_values:
        if int(k) < 1:
            raise ValueError(f"cut-off k must be positive, got {k}")
    return [f"{measure}@{int(k)}" for k in k_values for measure in measures]


def evaluate_run(
    qrels: Qrels,
    run: Run,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    measures: Sequence[str] = MEASURES,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score ``run[qid][doc] = score`` against ``qrels[qid][doc] = relevance``.

    Returns ``(aggregate, per_query)``: ``aggregate[name]`` is the mean of ``per_query[name][qid]`` over the
    counted queries (see the module docstring), for every ``name`` in :func:`metric_names`. Empty when no
    query counts.
    """
    names = metric_names(k_values, measures)
    per_query: dict[str, dict[str, float]] = {name: {} for name in names}
    for qid in sorted(qrels):
        judged = qrels[qid]
        if not any(rel >= 1 for rel in judged.values()):
            continue
        ranking = rank(run.get(qid, {}))
        for k in k_values:
            for measure in measures:
                per_query[f"{measure}@{int(k)}"][qid] = _FUNCTIONS[measure](ranking, judged, int(k))
    aggregate = {name: sum(values.values()) / len(values) for name, values in per_query.items() if values}
    return aggregate, per_query
