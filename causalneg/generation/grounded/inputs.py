"""What the grounded pipeline needs from a data set: its items and the corpus's vocabulary (document frequencies,
phrases)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from causalneg.generation.grounded.pipeline import GroundedItem
from causalneg.generation.grounded.vocabulary import CorpusVocabulary
from causalneg.records import RetrievalDataset


def build_items(
    dataset: RetrievalDataset,
    split_name: str,
    query_ids: Sequence[str],
    profile: str,
    neighbours: Mapping[str, Sequence[str]] | None = None,
) -> list[GroundedItem]:
    """One :class:`GroundedItem` per query id: every judged positive (full ``title. text``), answers, profile,
    and the full texts of ``neighbours[qid]`` (passage ids; see :func:`bm25_neighbours`).

    A positive missing from the corpus (``dataset.missing_documents=warn-and-keep``) is left out; a query with
    none left is counted by the pipeline as ``no_evidence``.
    """
    split = dataset.split(split_name)
    return [
        GroundedItem(
            query_id=qid,
            query=split.queries[qid].text,
            positives=tuple(
                (pid, dataset.corpus[pid].full_text) for pid in split.positives(qid) if pid in dataset.corpus
            ),
            answers=tuple(dataset.answers.get(qid, [])),
            profile=profile,
            titles=tuple(dataset.corpus[pid].title for pid in split.positives(qid) if pid in dataset.corpus),
            neighbours=tuple(dataset.corpus[pid].full_text for pid in (neighbours or {}).get(qid, ())),
        )
        for qid in query_ids
    ]


def document_frequency(dataset: RetrievalDataset) -> CorpusVocabulary:
    """The :class:`CorpusVocabulary` of ``dataset``'s corpus (each passage's ``title. text``)."""
    return CorpusVocabulary(passage.full_text for passage in dataset.corpus.values())


def bm25_neighbours(
    dataset: RetrievalDataset, split_name: str, query_ids: Sequence[str], count: int
) -> dict[str, list[str]]:
    """The ``count`` best BM25 passages per query that the qrels do not judge relevant (default BM25 options):
    where :mod:`.siblings` finds substitutes. Empty when ``count`` is 0."""
    if count <= 0 or not query_ids:
        return {}
    from causalneg.data.mining.bm25 import mine_bm25

    ranked = mine_bm25(dataset, split_name, list(query_ids), top_k=count)
    return {
        r.query_id: [pid for pid, _ in r.candidates if pid not in set(r.positive_ids)][:count] for r in ranked
    }
