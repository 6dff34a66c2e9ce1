"""What the grounded pipeline needs from a data set: its items and the corpus's vocabulary (document frequencies,
phrases)."""

from __future__ import annotations

from collections.abc import Sequence

from causalneg.generation.grounded.pipeline import GroundedItem
from causalneg.generation.grounded.vocabulary import CorpusVocabulary
from causalneg.records import RetrievalDataset


def build_items(
    dataset: RetrievalDataset, split_name: str, query_ids: Sequence[str], profile: str
) -> list[GroundedItem]:
    """One :class:`GroundedItem` per query id: every judged positive (full ``title. text``), answers, profile.

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
        )
        for qid in query_ids
    ]


def document_frequency(dataset: RetrievalDataset) -> CorpusVocabulary:
    """The :class:`CorpusVocabulary` of ``dataset``'s corpus (each passage's ``title. text``)."""
    return CorpusVocabulary(passage.full_text for passage in dataset.corpus.values())
