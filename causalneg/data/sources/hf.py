"""BEIR data sets from the Hugging Face hub (``BeIR/<name>`` + ``BeIR/<name>-qrels``), for online users.

The network part (:func:`load_hf_beir`, needs ``datasets``) only fetches rows; :func:`records_from_hf_rows`
converts plain row mappings and validates them with the same rules and errors as the BEIR file readers, the
"file" being ``<repo> (<part>)`` and the "line" the 1-based row number. The hub stores some ids as integers
(e.g. ``BeIR/scifact-qrels``): integer ids are converted to strings.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from causalneg.artifacts import fingerprint
from causalneg.data.readers import check_string
from causalneg.data.sources import build_split, requested_splits, with_carved_dev
from causalneg.errors import DataError, MissingDependencyError
from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit


def row_id(row: Mapping[str, Any], key: str, where: str, number: int) -> str:
    """An id field as a non-empty string; integers (not bools) are accepted and converted."""
    if key not in row:
        raise DataError("missing", path=where, line=number, field=key)
    value = row[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return check_string(value, where, number, key, allow_empty=False)


def _passages(rows: Iterable[Mapping[str, Any]], where: str) -> dict[str, Passage]:
    corpus: dict[str, Passage] = {}
    for number, row in enumerate(rows, start=1):
        pid = row_id(row, "_id", where, number)
        if pid in corpus:
            raise DataError(f"duplicate id {pid!r}", path=where, line=number, field="_id")
        if "text" not in row:
            raise DataError("missing", path=where, line=number, field="text")
        text = check_string(row["text"], where, number, "text", allow_empty=True)
        title = row.get("title") or ""
        corpus[pid] = Passage(pid, text, check_string(title, where, number, "title", allow_empty=True))
    if not corpus:
        raise DataError("no documents", path=where)
    return corpus


def _queries(rows: Iterable[Mapping[str, Any]], where: str) -> dict[str, Query]:
    queries: dict[str, Query] = {}
    for number, row in enumerate(rows, start=1):
        qid = row_id(row, "_id", where, number)
        if qid in queries:
            raise DataError(f"duplicate id {qid!r}", path=where, line=number, field="_id")
        if "text" not in row:
            raise DataError("missing", path=where, line=number, field="text")
        queries[qid] = Query(qid, check_string(row["text"], where, number, "text", allow_empty=False))
    if not queries:
        raise DataError("no queries", path=where)
    return queries


def _qrels(
    rows: Iterable[Mapping[str, Any]], where: str, queries: Mapping[str, Query], corpus: Mapping[str, Passage]
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(rows, start=1):
        qid, pid = row_id(row, "query-id", where, number), row_id(row, "corpus-id", where, number)
        if qid not in queries:
            raise DataError(f"unknown query id {qid!r}", path=where, line=number, field="query-id")
        if pid not in corpus:
            raise DataError(f"unknown document id {pid!r}", path=where, line=number, field="corpus-id")
        score = row.get("score")
        if isinstance(score, float) and score.is_integer():
            score = int(score)
        if not isinstance(score, int) or isinstance(score, bool):
            raise DataError(f"expected an integer, got {score!r}", path=where, line=number, field="score")
        qrels.setdefault(qid, {})[pid] = score
    if not qrels:
        raise DataError("no judgments: the split is empty", path=where)
    return qrels


def records_from_hf_rows(
    corpus_rows: Iterable[Mapping[str, Any]],
    query_rows: Iterable[Mapping[str, Any]],
    qrels_rows: Mapping[str, Iterable[Mapping[str, Any]]],
    source: str = "hf",
) -> tuple[dict[str, Passage], dict[str, RetrievalSplit]]:
    """Rows of the BeIR ``corpus`` / ``queries`` configs and qrels rows per split (``query-id``,
    ``corpus-id``, ``score``) -> ``(corpus, {split: RetrievalSplit})``. Pure: no network, any iterables of
    mappings."""
    corpus = _passages(corpus_rows, f"{source} (corpus)")
    queries = _queries(query_rows, f"{source} (queries)")
    splits = {
        split: build_split(queries, _qrels(rows, f"{source} (qrels {split})", queries, corpus))
        for split, rows in qrels_rows.items()
    }
    return corpus, splits


def load_hf_beir(
    repo_id: str = "BeIR/scifact",
    qrels_repo: str | None = None,
    name: str | None = None,
    train_split: str | None = "train",
    dev_split: str | None = None,
    test_split: str | None = "test",
    dev_from_train: int = 0,
    seed: int = 0,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> RetrievalDataset:
    """Download ``repo_id`` (configs ``corpus`` and ``queries``) and its qrels repo (default
    ``<repo_id>-qrels``, one split per qrels file) with ``datasets.load_dataset``, then convert them.
    Split options as in :func:`causalneg.data.sources.beir.load_beir`."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise MissingDependencyError(
            "datasets", hint="needed to download BeIR data from the Hugging Face hub"
        ) from None
    qrels_repo = qrels_repo or f"{repo_id}-qrels"
    common = {"revision": revision, "cache_dir": cache_dir}
    corpus_ds = datasets.load_dataset(repo_id, "corpus", split="corpus", **common)
    queries_ds = datasets.load_dataset(repo_id, "queries", split="queries", **common)
    names = requested_splits(train_split, dev_split, test_split, dev_from_train)
    qrels_ds = {split: datasets.load_dataset(qrels_repo, split=split, **common) for split in names}
    corpus, splits = records_from_hf_rows(corpus_ds, queries_ds, qrels_ds, source=repo_id)
    splits = with_carved_dev(splits, train_split, dev_split, dev_from_train, seed)
    dataset = RetrievalDataset(name=name or repo_id.rsplit("/", 1)[-1], corpus=corpus, splits=splits)
    content = [getattr(ds, "_fingerprint", None) for ds in (corpus_ds, queries_ds, *qrels_ds.values())]
    dataset.fingerprint = fingerprint(
        {
            "loader": "hf",
            "repos": [repo_id, qrels_repo, revision],
            "content": content,
            "splits": names,
            "dev_from_train": dev_from_train,
            "seed": seed,
        }
    )
    return dataset
