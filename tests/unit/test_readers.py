"""BEIR file readers: every malformed input gives one DataError naming file, line and field; fuzzing never
raises anything else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from causalneg.data.readers import (
    read_answers_jsonl,
    read_corpus_jsonl,
    read_pairs_tsv,
    read_qrels_tsv,
    read_queries_jsonl,
)
from causalneg.errors import DataError


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def expect_error(call: Callable[[], object], path: Path, line: int | None, field: str | None) -> DataError:
    with pytest.raises(DataError) as info:
        call()
    err, message = info.value, str(info.value)
    assert err.path == str(path) and str(path) in message
    assert err.line == line
    if line is not None:
        assert f"{path}:{line}:" in message
    assert err.field == field
    if field is not None:
        assert f"field '{field}'" in message
    return err


def test_reads_valid_corpus_queries_qrels_pairs_and_answers(tmp_path: Path) -> None:
    corpus = write(
        tmp_path / "corpus.jsonl",
        "\ufeff"
        + jsonl({"_id": "d1", "title": "T", "text": "one", "metadata": {}}, {"_id": "d2", "text": ""})
        + "\n",
    )
    queries = write(
        tmp_path / "queries.jsonl", jsonl({"_id": "q1", "text": "what"}, {"_id": "q2", "text": "who"})
    )
    docs = read_corpus_jsonl(corpus)
    assert list(docs) == ["d1", "d2"] and docs["d1"].title == "T" and docs["d2"].title == ""
    assert list(read_queries_jsonl(queries)) == ["q1", "q2"]
    qrels = write(
        tmp_path / "q.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq1\td1\t1\r\nq2\td2\t2\n"
    )
    assert read_qrels_tsv(qrels, {"q1", "q2"}, docs) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    no_header = write(tmp_path / "n.tsv", "q1\td1\t-1\n")
    assert read_qrels_tsv(no_header) == {"q1": {"d1": -1}}
    pairs = write(tmp_path / "p.tsv", "query-id\tcorpus-id\nq1\td2\nq1\td1\nq1\td2\n")
    assert read_pairs_tsv(pairs, {"q1"}, docs) == {"q1": ["d2", "d1"]}
    answers = write(
        tmp_path / "a.jsonl", jsonl({"_id": "q1", "answers": ["x", "y"]}, {"_id": "q2", "answer": "z"})
    )
    assert read_answers_jsonl(answers, {"q1", "q2"}) == {"q1": ["x", "y"], "q2": ["z"]}


@pytest.mark.parametrize(
    ("content", "line", "field", "words"),
    [
        (jsonl({"_id": "a", "text": "x"}, '{"_id": "b", "text": '), 2, None, "invalid JSON"),
        (jsonl({"_id": "a", "text": "x"}, "[1, 2]"), 2, None, "JSON object"),
        (jsonl({"text": "x"}), 1, "_id", "missing"),
        (jsonl({"_id": "  ", "text": "x"}), 1, "_id", "empty"),
        (jsonl({"_id": 7, "text": "x"}), 1, "_id", "expected a string"),
        (jsonl({"_id": "a"}), 1, "text", "missing"),
        (jsonl({"_id": "a", "text": 3}), 1, "text", "expected a string"),
        (jsonl({"_id": "a", "text": "x", "title": ["t"]}), 1, "title", "expected a string"),
        (jsonl({"_id": "a", "text": "x"}, "", {"_id": "a", "text": "y"}), 3, "_id", "duplicate id 'a'"),
        (jsonl('{"_id": "a", "text": "\\ud800"}'), 1, "text", "surrogate"),
        (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "\xff"}\n', 2, None, "UTF-8"),
        ("[" * 100_000 + "\n", 1, None, "invalid JSON"),
    ],
)
def test_corpus_errors_name_file_line_and_field(
    tmp_path: Path, content: str | bytes, line: int, field: str | None, words: str
) -> None:
    path = write(tmp_path / "corpus.jsonl", content)
    err = expect_error(lambda: read_corpus_jsonl(path), path, line, field)
    assert words in str(err)


def test_query_text_must_not_be_blank_and_duplicates_name_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "queries.jsonl", jsonl({"_id": "q", "text": " "}))
    expect_error(lambda: read_queries_jsonl(path), path, 1, "text")
    path = write(tmp_path / "queries.jsonl", jsonl({"_id": "q", "text": "a"}, {"_id": "q", "text": "b"}))
    assert "first seen on line 1" in str(expect_error(lambda: read_queries_jsonl(path), path, 2, "_id"))


@pytest.mark.parametrize(
    ("content", "line", "field", "words"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, None, "expected 3 tab-separated columns"),
        ("q1 d1 1\n", 1, None, "got 1"),
        ("q1\t0\td1\t1\n", 1, None, "got 4"),
        ("q1\td1\t1\nq9\td1\t1\n", 2, "query-id", "unknown query id 'q9'"),
        ("q1\td9\t1\n", 1, "corpus-id", "unknown document id 'd9'"),
        ("q1\td1\t1.5\n", 1, "score", "expected an integer"),
        ("q1\td1\thigh\n", 1, "score", "expected an integer"),
        ("q1\td1\t1\nq1\td1\t2\n", 2, "score", "conflicting judgment"),
        ("\td1\t1\n", 1, "query-id", "empty"),
    ],
)
def test_qrels_errors_name_file_line_and_field(
    tmp_path: Path, content: str, line: int, field: str | None, words: str
) -> None:
    path = write(tmp_path / "test.tsv", content)
    err = expect_error(lambda: read_qrels_tsv(path, {"q1"}, {"d1"}), path, line, field)
    assert words in str(err)


def test_pairs_and_answers_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "hn.tsv", "query-id\tcorpus-id\nq1\td1\t1\n")
    expect_error(lambda: read_pairs_tsv(path), path, 2, None)
    path = write(tmp_path / "hn.tsv", "q1\td9\n")
    expect_error(lambda: read_pairs_tsv(path, {"q1"}, {"d1"}), path, 1, "corpus-id")
    path = write(tmp_path / "a.jsonl", jsonl({"_id": "q1", "answers": "x"}))
    expect_error(lambda: read_answers_jsonl(path), path, 1, "answers")
    path = write(tmp_path / "a.jsonl", jsonl({"_id": "q1", "type": "bridge"}))
    expect_error(lambda: read_answers_jsonl(path), path, 1, "answers")
    path = write(tmp_path / "a.jsonl", jsonl({"_id": "q9", "answer": "x"}))
    expect_error(lambda: read_answers_jsonl(path, {"q1"}), path, 1, "_id")


@pytest.mark.parametrize(
    "reader",
    [read_corpus_jsonl, read_queries_jsonl, read_qrels_tsv, read_pairs_tsv, read_answers_jsonl],
)
def test_empty_and_missing_files(tmp_path: Path, reader: Callable[[Path], object]) -> None:
    empty = write(tmp_path / "empty", "\n  \n")
    with pytest.raises(DataError, match="empty") as info:
        reader(empty)
    assert info.value.path == str(empty)
    missing = tmp_path / "nowhere" / "corpus.jsonl"
    with pytest.raises(DataError, match="file not found: expected") as info:
        reader(missing)
    assert str(missing) in str(info.value)


READERS: list[Callable[[Path], object]] = [
    read_corpus_jsonl,
    read_queries_jsonl,
    read_qrels_tsv,
    read_pairs_tsv,
    read_answers_jsonl,
    lambda p: read_qrels_tsv(p, {"q"}, {"d"}),
]
LINE_PARTS = st.one_of(
    st.sampled_from(
        ['{"_id": "q", "text": "t"}', '{"_id": "d"}', "q\td\t1", "q\td", '{"answers": [1]}', "[]"]
    ),
    st.text(max_size=40),
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    raw=st.binary(max_size=200),
    lines=st.lists(LINE_PARTS, max_size=6),
    which=st.integers(0, len(READERS) - 1),
)
def test_fuzz_readers_return_or_raise_data_error(
    tmp_path: Path, raw: bytes, lines: list[str], which: int
) -> None:
    for i, content in enumerate((raw, "\n".join(lines).encode("utf-8", "surrogatepass"))):
        path = tmp_path / f"fuzz{i}"
        path.write_bytes(content)
        try:
            READERS[which](path)
        except DataError as err:
            assert str(path) in str(err)
