"""Validated readers for BEIR-layout files: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``,
``hard_negatives/<split>.tsv`` and answer files.

Every failure raises :class:`causalneg.errors.DataError` naming the file, the 1-based line and the field, so a
user can open the file at the right place. Nothing else escapes: undecodable bytes, bad JSON, nested-too-deep
JSON, wrong types, duplicate ids, unknown ids and empty files are all reported the same way. Blank lines are
skipped everywhere. Extra JSON keys (e.g. BEIR's ``metadata``) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from causalneg.errors import DataError
from causalneg.records import Passage, Query

QRELS_HEADER = ("query-id", "corpus-id", "score")
PAIRS_HEADER = ("query-id", "corpus-id")


def _lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_no, text)`` for each non-blank line, decoding UTF-8 line by line (so a bad byte names its
    line). A missing file names the path that was expected and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: expected {what} at this path", path=path)
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"not valid UTF-8 ({err.reason} at byte {err.start})", path=path, line=line_no
                ) from None
            text = text.rstrip("\r\n")
            if line_no == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark some editors add
            if text.strip():
                yield line_no, text


def check_string(value: Any, path: str | Path, line: int, field: str, *, allow_empty: bool) -> str:
    """Return ``value`` if it is a string (non-blank unless ``allow_empty``) that encodes to UTF-8."""
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", path=path, line=line, field=field)
    if not allow_empty and not value.strip():
        raise DataError("must not be empty", path=path, line=line, field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            "contains an unpaired surrogate (\\ud800-\\udfff)", path=path, line=line, field=field
        ) from None
    return value


def iter_json_objects(path: str | Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_no, object)`` for each non-blank line of a JSONL file; ``what`` describes the expected file."""
    for line_no, text in _lines(path, what):
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"invalid JSON ({err.msg} at column {err.colno})", path=path, line=line_no
            ) from None
        except RecursionError:
            raise DataError("invalid JSON (nested too deeply)", path=path, line=line_no) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, line=line_no)
        yield line_no, row


def _record_id(row: Mapping[str, Any], path: str | Path, line: int, seen: dict[str, int]) -> str:
    if "_id" not in row:
        raise DataError("missing", path=path, line=line, field="_id")
    rid = check_string(row["_id"], path, line, "_id", allow_empty=False)
    if rid in seen:
        raise DataError(
            f"duplicate id {rid!r} (first seen on line {seen[rid]})", path=path, line=line, field="_id"
        )
    seen[rid] = line
    return rid


def _required(row: Mapping[str, Any], key: str, path: str | Path, line: int) -> Any:
    if key not in row:
        raise DataError("missing", path=path, line=line, field=key)
    return row[key]


def read_corpus_jsonl(path: str | Path) -> dict[str, Passage]:
    """``{"_id": str, "text": str, "title": str (optional)}`` per line -> ``{id: Passage}`` in file order.

    ``text`` may be empty (some BEIR corpora have title-only documents) but must be present and a string.
    """
    corpus: dict[str, Passage] = {}
    seen: dict[str, int] = {}
    for line, row in iter_json_objects(path, "a BEIR corpus (corpus.jsonl)"):
        pid = _record_id(row, path, line, seen)
        text = check_string(_required(row, "text", path, line), path, line, "text", allow_empty=True)
        title = row.get("title", "")
        title = "" if title is None else check_string(title, path, line, "title", allow_empty=True)
        corpus[pid] = Passage(id=pid, text=text, title=title)
    if not corpus:
        raise DataError("no documents: the corpus file is empty", path=path)
    return corpus


def read_queries_jsonl(path: str | Path) -> dict[str, Query]:
    """``{"_id": str, "text": str}`` per line -> ``{id: Query}`` in file order; the text must be non-blank."""
    queries: dict[str, Query] = {}
    seen: dict[str, int] = {}
    for line, row in iter_json_objects(path, "BEIR queries (queries.jsonl)"):
        qid = _record_id(row, path, line, seen)
        text = check_string(_required(row, "text", path, line), path, line, "text", allow_empty=False)
        queries[qid] = Query(id=qid, text=text)
    if not queries:
        raise DataError("no queries: the queries file is empty", path=path)
    return queries


def _tsv_rows(path: str | Path, header: tuple[str, ...], what: str) -> Iterator[tuple[int, list[str]]]:
    """Split each line on tabs, check the column count and skip an optional header on the first line."""
    n = len(header)
    first = True
    for line_no, text in _lines(path, what):
        cols = text.split("\t")
        if len(cols) != n:
            raise DataError(
                f"expected {n} tab-separated columns ({', '.join(header)}), got {len(cols)}",
                path=path,
                line=line_no,
            )
        is_header = first and tuple(c.strip().lower().replace("_", "-") for c in cols) == header
        first = False
        if is_header:
            continue
        for name, value in zip(header[:2], cols[:2], strict=False):
            if not value.strip():
                raise DataError("must not be empty", path=path, line=line_no, field=name)
        yield line_no, [c.strip() for c in cols]


def _check_known(value: str, known: Collection[str] | None, path: str | Path, line: int, field: str) -> None:
    if known is not None and value not in known:
        kind = "document" if field == "corpus-id" else "query"
        raise DataError(
            f"unknown {kind} id {value!r} (not in the {kind} file)", path=path, line=line, field=field
        )


def read_qrels_tsv(
    path: str | Path,
    known_queries: Collection[str] | None = None,
    known_docs: Collection[str] | None = None,
) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` (optional header) -> ``{qid: {pid: score}}``.

    Scores must be integers. A repeated pair with the same score is ignored; with a different score it is an
    error. Ids must exist in ``known_queries`` / ``known_docs`` when those are given.
    """
    qrels: dict[str, dict[str, int]] = {}
    first: dict[tuple[str, str], int] = {}
    for line, (qid, pid, raw_score) in _tsv_rows(path, QRELS_HEADER, "relevance judgments (qrels TSV)"):
        _check_known(qid, known_queries, path, line, "query-id")
        _check_known(pid, known_docs, path, line, "corpus-id")
        try:
            score = int(raw_score)
        except ValueError:
            raise DataError(
                f"expected an integer, got {raw_score!r}", path=path, line=line, field="score"
            ) from None
        previous = qrels.setdefault(qid, {}).get(pid)
        if previous is not None and previous != score:
            raise DataError(
                f"conflicting judgment for ({qid}, {pid}): {score} here, "
                f"{previous} on line {first[(qid, pid)]}",
                path=path,
                line=line,
                field="score",
            )
        first.setdefault((qid, pid), line)
        qrels[qid][pid] = score
    if not qrels:
        raise DataError("no judgments: the qrels file is empty", path=path)
    return qrels


def read_pairs_tsv(
    path: str | Path,
    known_queries: Collection[str] | None = None,
    known_docs: Collection[str] | None = None,
) -> dict[str, list[str]]:
    """``query-id<TAB>corpus-id`` (optional header), e.g. hard negatives -> ``{qid: [pid, ...]}`` in file
    order without repeats."""
    pairs: dict[str, list[str]] = {}
    for line, (qid, pid) in _tsv_rows(path, PAIRS_HEADER, "query/document pairs (TSV)"):
        _check_known(qid, known_queries, path, line, "query-id")
        _check_known(pid, known_docs, path, line, "corpus-id")
        ids = pairs.setdefault(qid, [])
        if pid not in ids:
            ids.append(pid)
    if not pairs:
        raise DataError("no pairs: the file is empty", path=path)
    return pairs


def read_answers_jsonl(
    path: str | Path, known_queries: Collection[str] | None = None
) -> dict[str, list[str]]:
    """Answer strings per query from ``{"_id", "answers": [str, ...]}`` (NQ style) or
    ``{"_id", "answer": str}`` (HotpotQA ``query_meta.jsonl`` style) lines -> ``{qid: [answer, ...]}``."""
    answers: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    for line, row in iter_json_objects(path, "answers per query (JSONL with _id and answers/answer)"):
        qid = _record_id(row, path, line, seen)
        _check_known(qid, known_queries, path, line, "_id")
        if "answers" in row:
            values = row["answers"]
            if not isinstance(values, list):
                raise DataError(
                    f"expected a list, got {type(values).__name__}", path=path, line=line, field="answers"
                )
            answers[qid] = [check_string(v, path, line, "answers", allow_empty=False) for v in values]
        elif "answer" in row:
            answers[qid] = [check_string(row["answer"], path, line, "answer", allow_empty=False)]
        else:
            raise DataError("missing (need 'answers' or 'answer')", path=path, line=line, field="answers")
    if not answers:
        raise DataError("no answers: the file is empty", path=path)
    return answers
