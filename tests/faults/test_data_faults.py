"""Bad data through the user path: each fault is one DataError naming file, line and field.

The readers' own error cases and their hypothesis fuzz test (all five readers, incl. answers and pairs files)
live in tests/unit/test_readers.py; here the same faults travel through the config, the BEIR loader and a stage
(``dispatch``), and once through ``python run.py`` to check what a user sees on stderr.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from causalneg.errors import DataError
from causalneg.stages import dispatch
from tests.faults import all_runs, run_cli

pytestmark = pytest.mark.integration

Fault = Callable[[Path], tuple[str, int | None, str | None, str]]  # mutate -> (file, line, field, text)


def append(path: Path, line: str | bytes) -> int:
    """Append one line; return its 1-based line number."""
    data = path.read_bytes()
    payload = line if isinstance(line, bytes) else line.encode("utf-8")
    path.write_bytes(data + payload + b"\n")
    return data.count(b"\n") + 1


def malformed_json(root: Path) -> tuple[str, int | None, str | None, str]:
    return (
        "corpus.jsonl",
        append(root / "corpus.jsonl", '{"_id": "x", "text": "unterminated'),
        None,
        "invalid JSON",
    )


def missing_id(root: Path) -> tuple[str, int | None, str | None, str]:
    return "queries.jsonl", append(root / "queries.jsonl", '{"text": "a query without id"}'), "_id", "missing"


def missing_text(root: Path) -> tuple[str, int | None, str | None, str]:
    return "corpus.jsonl", append(root / "corpus.jsonl", '{"_id": "no-text"}'), "text", "missing"


def text_not_a_string(root: Path) -> tuple[str, int | None, str | None, str]:
    line = append(root / "queries.jsonl", json.dumps({"_id": "q-num", "text": 42}))
    return "queries.jsonl", line, "text", "expected a string, got int"


def duplicate_id(root: Path) -> tuple[str, int | None, str | None, str]:
    line = append(root / "corpus.jsonl", json.dumps({"_id": "volcano-2", "text": "again"}))
    return "corpus.jsonl", line, "_id", "duplicate id 'volcano-2' (first seen on line 3)"


def undecodable_bytes(root: Path) -> tuple[str, int | None, str | None, str]:
    return (
        "queries.jsonl",
        append(root / "queries.jsonl", b'{"_id": "q-bin", "text": "\xff\xfe"}'),
        None,
        "UTF-8",
    )


def unknown_query_in_qrels(root: Path) -> tuple[str, int | None, str | None, str]:
    line = append(root / "qrels" / "train.tsv", "q-nope\tvolcano-0\t1")
    return "qrels/train.tsv", line, "query-id", "unknown query id 'q-nope'"


def unknown_doc_in_qrels(root: Path) -> tuple[str, int | None, str | None, str]:
    line = append(root / "qrels" / "test.tsv", "q-volcano-6\tno-such-doc\t1")
    return "qrels/test.tsv", line, "corpus-id", "unknown document id 'no-such-doc'"


def score_not_an_integer(root: Path) -> tuple[str, int | None, str | None, str]:
    line = append(root / "qrels" / "train.tsv", "q-volcano-0\tvolcano-0\thigh")
    return "qrels/train.tsv", line, "score", "expected an integer"


def unknown_doc_in_hard_negatives(root: Path) -> tuple[str, int | None, str | None, str]:
    (root / "hard_negatives").mkdir()
    (root / "hard_negatives" / "train.tsv").write_text("q-volcano-0\tviolin-1\nq-volcano-1\tghost\n")
    return "hard_negatives/train.tsv", 2, "corpus-id", "unknown document id 'ghost'"


def empty_split(root: Path) -> tuple[str, int | None, str | None, str]:
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    return "qrels/test.tsv", None, None, "no judgments: the qrels file is empty"


def split_without_positive(root: Path) -> tuple[str, int | None, str | None, str]:
    (root / "qrels" / "test.tsv").write_text("q-volcano-6\tvolcano-6\t0\n")
    return "qrels/test.tsv", None, None, "split 'test' has no positive judgment"


def missing_split_file(root: Path) -> tuple[str, int | None, str | None, str]:
    (root / "qrels" / "test.tsv").unlink()
    return (
        "qrels/test.tsv",
        None,
        None,
        "expected the qrels of split 'test' here (available: ['dev', 'train'])",
    )


def missing_corpus_file(root: Path) -> tuple[str, int | None, str | None, str]:
    (root / "corpus.jsonl").unlink()
    return "corpus.jsonl", None, None, "file not found: expected a BEIR corpus"


FAULTS: list[Fault] = [
    malformed_json,
    missing_id,
    missing_text,
    text_not_a_string,
    duplicate_id,
    undecodable_bytes,
    unknown_query_in_qrels,
    unknown_doc_in_qrels,
    score_not_an_integer,
    unknown_doc_in_hard_negatives,
    empty_split,
    split_without_positive,
    missing_split_file,
    missing_corpus_file,
]


def mine_overrides(tmp_path: Path, beir: Path) -> list[str]:
    """The mine stage: it loads the data set first and needs no encoder (BM25), so a data fault shows fast."""
    return [
        "stage=mine",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        "dataset=beir",
        f"dataset.path={beir}",
        "dataset.name=tiny",
        "dataset.dev_split=dev",
        "dataset.missing_documents=error",  # the default keeps such qrels (tests/unit/test_missing_documents.py)
    ]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_data_fault_is_one_error_naming_file_line_and_field(
    fault: Fault, tmp_path: Path, tiny_beir: Path, compose_cfg
) -> None:
    name, line, field, text = fault(tiny_beir)
    with pytest.raises(DataError) as info:
        dispatch(compose_cfg(mine_overrides(tmp_path, tiny_beir)))
    err = info.value
    assert err.path == str(tiny_beir / name)
    assert (err.line, err.field) == (line, field)
    message = str(err)
    assert text in message and "\n" not in message
    where = f"{tiny_beir / name}:{line}: " if line is not None else f"{tiny_beir / name}: "
    assert message.startswith(where + (f"field '{field}': " if field else ""))
    assert not (tmp_path / "artifacts").exists()  # nothing was mined from bad data


def test_wrong_dataset_path_names_the_folder(tmp_path: Path, compose_cfg) -> None:
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(DataError, match="dataset folder not found") as info:
        dispatch(compose_cfg(mine_overrides(tmp_path, missing)))
    assert info.value.path == str(missing)


@pytest.mark.parametrize("stage", ["mine", pytest.param("evaluate", marks=pytest.mark.slow)])
def test_cli_prints_one_error_line_and_exits_2(
    stage: str, tmp_path: Path, tiny_beir: Path, seed_mlflow
) -> None:
    """What a user sees: ``error: <file>:<line>: field '<field>': <what>`` on stderr, no traceback, status 2.

    ``evaluate`` opens its MLflow run before reading data (as every encoder stage does): the run ends FAILED."""
    line = append(tiny_beir / "queries.jsonl", '{"_id": "q-bad", "text": ')
    seed_mlflow(tmp_path)
    args = [
        *mine_overrides(tmp_path, tiny_beir),
        f"stage={stage}",
        "model=tiny",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    started = time.monotonic()
    done = run_cli([a for a in args if not a.startswith("paths.output_dir")], timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr
    assert lines[-1].startswith(f"error: {tiny_beir / 'queries.jsonl'}:{line}: invalid JSON (Expecting value")
    assert time.monotonic() - started < 240
    if stage == "evaluate":
        assert [r.info.status for r in all_runs(tmp_path)] == ["FAILED"]
