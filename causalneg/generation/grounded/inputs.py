"""What the grounded pipeline needs from a data set: its items and the corpus's document frequencies."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from causalneg.generation.grounded.pipeline import GroundedItem
from causalneg.records import RetrievalDataset

_TOKEN = re.compile(r"[0-9A-Za-zÀ-ÖØ-öø-ÿ]+")


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


def document_frequency(dataset: RetrievalDataset) -> Callable[[str], float]:
    """``df(token)``: the share of corpus documents whose lower-cased word tokens include ``token``."""
    counts: Counter[str] = Counter()
    for passage in dataset.corpus.values():
        counts.update({t.lower() for t in _TOKEN.findall(passage.full_text)})
    total = max(len(dataset.corpus), 1)
    return lambda token: counts.get(token.lower(), 0) / total
