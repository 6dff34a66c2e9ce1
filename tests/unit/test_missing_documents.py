"""``dataset.missing_documents``: a qrel whose document is not in the corpus (as in some published BEIR releases)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from causalneg.data.sources.beir import load_beir
from causalneg.errors import ConfigError, DataError
from causalneg.evaluation.retrieval import evaluate_retrieval
from causalneg.models.encoder import DualEncoder, EncoderConfig

HEAD = "query-id\tcorpus-id\tscore\n"


def beir_with_a_missing_doc(root: Path) -> Path:
    """Six docs; test: q0 judges d0 and the missing 'ghost' (line 3), q1 judges only 'ghost' (line 4), q2 d2."""
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"lava orbit text {i}"} for i in range(6)]
    queries = [{"_id": f"q{i}", "text": f"query lava {i}"} for i in range(4)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text(HEAD + "q3\td3\t1\n")
    (root / "qrels" / "test.tsv").write_text(HEAD + "q0\td0\t1\nq0\tghost\t2\nq1\tghost\t1\nq2\td2\t1\n")
    return root


def test_warn_and_keep_is_the_default_keeps_the_qrels_and_logs_the_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = beir_with_a_missing_doc(tmp_path / "set")
    with caplog.at_level(logging.WARNING, logger="causalneg.data.sources.beir"):
        ds = load_beir(root)
    test = ds.split("test")
    assert test.qrels == {"q0": {"d0": 1, "ghost": 2}, "q1": {"ghost": 1}, "q2": {"d2": 1}}
    assert list(test.queries) == ["q0", "q1", "q2"]
    assert "ghost" not in ds.corpus
    (record,) = [r for r in caplog.records if "missing from the corpus" in r.getMessage()]
    assert "2 qrels of 2 queries" in record.getMessage() and "kept" in record.getMessage()
    assert str(root / "qrels" / "test.tsv") in record.getMessage()


def test_warn_and_drop_removes_the_qrels_and_queries_left_without_judgments(tmp_path: Path) -> None:
    root = beir_with_a_missing_doc(tmp_path / "set")
    test = load_beir(root, missing_documents="warn-and-drop").split("test")
    assert test.qrels == {"q0": {"d0": 1}, "q2": {"d2": 1}}
    assert list(test.queries) == ["q0", "q2"]


def test_error_names_file_line_and_field(tmp_path: Path) -> None:
    root = beir_with_a_missing_doc(tmp_path / "set")
    with pytest.raises(DataError, match="unknown document id 'ghost'") as info:
        load_beir(root, missing_documents="error")
    assert (info.value.path, info.value.line, info.value.field) == (
        str(root / "qrels" / "test.tsv"),
        3,
        "corpus-id",
    )


def test_other_errors_stay_strict_and_a_bad_policy_is_a_config_error(tmp_path: Path) -> None:
    root = beir_with_a_missing_doc(tmp_path / "set")
    with pytest.raises(ConfigError, match="missing_documents must be one of"):
        load_beir(root, missing_documents="ignore")  # type: ignore[arg-type]
    (root / "qrels" / "train.tsv").write_text(HEAD + "q3\td3\t1\nq-nope\td1\t1\n")
    with pytest.raises(DataError, match="unknown query id 'q-nope'"):
        load_beir(root)
    (root / "qrels" / "train.tsv").write_text(HEAD + "q3\td3\t1\n")
    (root / "hard_negatives").mkdir()
    (root / "hard_negatives" / "train.tsv").write_text("q3\tghost\n")
    with pytest.raises(DataError, match="unknown document id 'ghost'"):
        load_beir(root)
    (root / "qrels" / "train.tsv").write_text(HEAD + "q3\tghost\t1\n")
    with pytest.raises(DataError, match="no judgments left"):
        load_beir(root, missing_documents="warn-and-drop")


def test_fingerprint_names_the_policy_only_when_a_qrel_is_affected(tmp_path: Path) -> None:
    root = beir_with_a_missing_doc(tmp_path / "set")
    keep, drop = load_beir(root), load_beir(root, missing_documents="warn-and-drop")
    assert keep.fingerprint != drop.fingerprint
    clean_keep, clean_error = (
        load_beir(root, test_split=None),
        load_beir(root, test_split=None, missing_documents="error"),
    )
    assert clean_keep.fingerprint == clean_error.fingerprint


def test_evaluation_under_warn_and_keep_scores_what_it_can(tmp_path: Path) -> None:
    """The missing document is never retrieved but stays in the ideal ranking, as in BEIR/MTEB: q1 (only 'ghost'
    judged) counts with nDCG 0; q0's ideal DCG holds its grade-2 'ghost', so finding d0 gives less than 1."""
    torch.manual_seed(0)
    ds = load_beir(beir_with_a_missing_doc(tmp_path / "set"))
    encoder = DualEncoder.from_config(EncoderConfig(name="tiny", source="tiny", name_or_path="tiny"))
    result = evaluate_retrieval(encoder, ds, "test", k=6)
    assert result.stats["n_queries"] == 3 and result.stats["n_docs"] == 6
    ndcg = result.per_query["ndcg@10"]
    assert ndcg["q1"] == 0.0 and result.per_query["recall@100"]["q1"] == 0.0
    assert 0.0 < ndcg["q0"] < 1.0 and result.per_query["recall@100"]["q0"] == 0.5
    assert ndcg["q2"] > 0.0 and result.per_query["recall@100"]["q2"] == 1.0
    assert all("ghost" not in docs for docs in result.run.values())
    assert result.metrics["ndcg@10"] == pytest.approx(sum(ndcg.values()) / 3)


def test_grounded_items_leave_out_positives_missing_from_the_corpus(tmp_path: Path) -> None:
    from causalneg.generation.grounded.inputs import build_items

    ds = load_beir(beir_with_a_missing_doc(tmp_path / "set"))
    q0, q1 = build_items(ds, "test", ["q0", "q1"], "generic")
    assert [pid for pid, _ in q0.positives] == ["d0"]
    assert q1.positives == ()  # the grounded pipeline counts it as no_evidence
