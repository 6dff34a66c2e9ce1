"""Data sets by ``ir_datasets`` id (``beir/scifact``, ``beir/hotpotqa``, ``msmarco-passage``, ...), for users
with internet.

:func:`load_ir_datasets` reads the documents of ``dataset_id`` and, for each split, the queries and qrels of
``<dataset_id>/<split>`` (override with ``split_ids``, e.g. ``{"train": "msmarco-passage/train/judged"}``).
The conversion (:func:`records_from_ir_datasets`) takes plain iterables of ir_datasets' named tuples (or any
objects with the same attributes): docs ``doc_id, text[, title]`` (or a ``default_text()`` method), queries
``query_id, text``, qrels ``query_id, doc_id, relevance``. Errors name ``<id> (<part>)`` and the 1-based
record number.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from causalneg.artifacts import fingerprint
from causalneg.data.sources import build_split, requested_splits, with_carved_dev
from causalneg.data.sources.hf import row_id
from causalneg.errors import DataError, MissingDependencyError
from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit


def _fields(record: Any, names: tuple[str, ...], where: str, number: int) -> dict[str, Any]:
    """The named attributes of a record as a dict; ``text`` falls back to ``default_text()``."""
    row = {}
    for name in names:
        if hasattr(record, name):
            row[name] = getattr(record, name)
        elif name == "text" and callable(getattr(record, "default_text", None)):
            row[name] = record.default_text()
        elif name != "title":
            raise DataError(
                f"record has no attribute '{name}' ({type(record).__name__})", path=where, line=number
            )
    return row


def passages_from_ir_docs(docs_iter: Iterable[Any], source: str = "ir_datasets") -> dict[str, Passage]:
    where = f"{source} (docs)"
    corpus: dict[str, Passage] = {}
    for number, doc in enumerate(docs_iter, start=1):
        row = _fields(doc, ("doc_id", "text", "title"), where, number)
        pid = row_id(row, "doc_id", where, number)
        if pid in corpus:
            raise DataError(f"duplicate id {pid!r}", path=where, line=number, field="doc_id")
        text, title = row["text"], row.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise DataError("expected strings for text and title", path=where, line=number, field="text")
        corpus[pid] = Passage(pid, text, title)
    if not corpus:
        raise DataError("no documents", path=where)
    return corpus


def split_from_ir(
    queries_iter: Iterable[Any],
    qrels_iter: Iterable[Any],
    corpus: Mapping[str, Passage],
    source: str = "ir_datasets",
) -> RetrievalSplit:
    """Queries and qrels of one split; a qrel naming an unknown query or document is an error."""
    where_q, where_r = f"{source} (queries)", f"{source} (qrels)"
    queries: dict[str, Query] = {}
    for number, query in enumerate(queries_iter, start=1):
        row = _fields(query, ("query_id", "text"), where_q, number)
        qid = row_id(row, "query_id", where_q, number)
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError("expected a non-empty string", path=where_q, line=number, field="text")
        queries[qid] = Query(qid, row["text"])
    qrels: dict[str, dict[str, int]] = {}
    for number, qrel in enumerate(qrels_iter, start=1):
        row = _fields(qrel, ("query_id", "doc_id", "relevance"), where_r, number)
        qid, pid = row_id(row, "query_id", where_r, number), row_id(row, "doc_id", where_r, number)
        if qid not in queries:
            raise DataError(f"unknown query id {qid!r}", path=where_r, line=number, field="query_id")
        if pid not in corpus:
            raise DataError(f"unknown document id {pid!r}", path=where_r, line=number, field="doc_id")
        if not isinstance(row["relevance"], int) or isinstance(row["relevance"], bool):
            raise DataError(
                f"expected an integer, got {row['relevance']!r}", path=where_r, line=number, field="relevance"
            )
        qrels.setdefault(qid, {})[pid] = row["relevance"]
    if not qrels:
        raise DataError("no judgments: the split is empty", path=where_r)
    return build_split(queries, qrels)


def records_from_ir_datasets(
    docs_iter: Iterable[Any],
    queries_iter: Iterable[Any],
    qrels_iter: Iterable[Any],
    source: str = "ir_datasets",
) -> tuple[dict[str, Passage], RetrievalSplit]:
    """Pure conversion of one ir_datasets split: ``(corpus, split)``."""
    corpus = passages_from_ir_docs(docs_iter, source)
    return corpus, split_from_ir(queries_iter, qrels_iter, corpus, source)


def load_ir_datasets(
    dataset_id: str,
    name: str | None = None,
    train_split: str | None = "train",
    dev_split: str | None = None,
    test_split: str | None = "test",
    split_ids: Mapping[str, str] | None = None,
    dev_from_train: int = 0,
    seed: int = 0,
) -> RetrievalDataset:
    """Load ``dataset_id`` through ``ir_datasets`` (downloads on first use). Split options as in
    :func:`causalneg.data.sources.beir.load_beir`."""
    try:
        ir = importlib.import_module("ir_datasets")
    except ImportError:
        raise MissingDependencyError(
            "ir_datasets", hint="needed to load data sets by ir_datasets id"
        ) from None
    names = requested_splits(train_split, dev_split, test_split, dev_from_train)
    ids = {split: (split_ids or {}).get(split, f"{dataset_id}/{split}") for split in names}
    corpus = passages_from_ir_docs(ir.load(dataset_id).docs_iter(), dataset_id)
    splits = {}
    for split, split_id in ids.items():
        handle = ir.load(split_id)
        splits[split] = split_from_ir(handle.queries_iter(), handle.qrels_iter(), corpus, split_id)
    splits = with_carved_dev(splits, train_split, dev_split, dev_from_train, seed)
    dataset = RetrievalDataset(name=name or dataset_id.replace("/", "-"), corpus=corpus, splits=splits)
    dataset.fingerprint = fingerprint(
        {
            "loader": "ir_datasets",
            "docs": dataset_id,
            "splits": ids,
            "dev_from_train": dev_from_train,
            "seed": seed,
        }
    )
    return dataset
