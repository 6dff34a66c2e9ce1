"""Corpus encoding (bucketing, bf16, cache), exact search, and retrieval evaluation end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from causalneg.contracts import METRICS
from causalneg.errors import DataError
from causalneg.evaluation.embedding_cache import EmbeddingCache, texts_fingerprint
from causalneg.evaluation.encoding import (
    encode_texts,
    encode_texts_with_stats,
    length_batches,
    padding_fraction,
)
from causalneg.evaluation.metrics import evaluate_run
from causalneg.evaluation.retrieval import dev_subcorpus_ids, evaluate_retrieval
from causalneg.evaluation.search import FAISS_AVAILABLE, exact_topk, faiss_topk
from causalneg.models.encoder import DualEncoder, EncoderConfig
from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit

pytestmark = pytest.mark.integration
WORDS = [
    "lava",
    "magma",
    "orbit",
    "antenna",
    "bishop",
    "rook",
    "dough",
    "yeast",
    "reef",
    "algae",
    "ice",
    "fjord",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder() -> DualEncoder:
    return DualEncoder.from_config(
        EncoderConfig(name="tiny", source="tiny", name_or_path="tiny", doc_max_length=48)
    )


def _texts(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + (i * 13) % 40)) for i in range(n)]


def test_padding_fraction_by_hand() -> None:
    lengths = [1, 10, 1, 10]
    assert padding_fraction(lengths, 2, bucketed=False) == pytest.approx(1 - 22 / 40)
    assert padding_fraction(lengths, 2, bucketed=True) == 0.0
    assert length_batches(lengths, 3, bucketed=True) == [[1, 3, 0], [2]]
    assert padding_fraction([], 4, bucketed=True) == 0.0


def test_bucketed_encoding_keeps_input_order(encoder: DualEncoder) -> None:
    texts = _texts(37)
    encoder.train()
    bucketed, stats = encode_texts_with_stats(encoder, texts, "doc", batch_size=8, progress=False)
    assert encoder.training and all(m.training for m in encoder.modules())  # mode restored
    encoder.eval()
    plain, plain_stats = encode_texts_with_stats(
        encoder, texts, "doc", batch_size=8, progress=False, bucketed=False
    )
    singles = torch.cat([encode_texts(encoder, [t], "doc", progress=False) for t in texts[:5]])
    assert bucketed.shape == (37, 32) and torch.allclose(bucketed, plain, atol=1e-5)
    assert torch.allclose(bucketed[:5], singles, atol=1e-5)
    assert stats.padding_fraction < plain_stats.padding_fraction and stats.n_batches == 5
    lengths = [len(ids) for ids in encoder.token_ids(texts, "doc")]
    assert stats.padding_fraction == pytest.approx(padding_fraction(lengths, 8, bucketed=True))
    weight = torch.ones(32, requires_grad=True)  # the result is an ordinary tensor, usable under autograd
    (bucketed * weight).sum().backward()
    assert encode_texts(encoder, [], "doc", progress=False).shape == (0, 32)


def test_bf16_runs_and_returns_float32(encoder: DualEncoder) -> None:
    texts = _texts(16)
    fp32 = encode_texts(encoder, texts, "doc", progress=False)
    bf16 = encode_texts(encoder, texts, "doc", precision="bf16", progress=False)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert F.cosine_similarity(bf16, fp32).min() > 0.98
    with pytest.raises(ValueError, match="precision"):
        encode_texts(encoder, texts, "doc", precision="fp8", progress=False)


def test_embedding_cache_hits_misses_and_invalidation(tmp_path: Path) -> None:
    encoder = DualEncoder.from_config(EncoderConfig(name="tiny", source="tiny", name_or_path="tiny"))
    cache = EmbeddingCache(tmp_path / "emb")
    texts = _texts(10)
    first, stats = encode_texts_with_stats(encoder, texts, "doc", cache=cache, progress=False)
    assert not stats.cache_hit and len(list(cache.directory.glob("*.npy"))) == 1
    again, stats = encode_texts_with_stats(encoder, texts, "doc", batch_size=3, cache=cache, progress=False)
    assert stats.cache_hit and torch.equal(first, again)  # batch size is not part of the key
    for kwargs in ({"side": "query"}, {"precision": "bf16"}):
        _, stats = encode_texts_with_stats(
            encoder, texts, **{"side": "doc", **kwargs}, cache=cache, progress=False
        )
        assert not stats.cache_hit, kwargs
    _, stats = encode_texts_with_stats(encoder, texts[::-1], "doc", cache=cache, progress=False)
    assert not stats.cache_hit
    with torch.no_grad():
        next(encoder.parameters()).add_(0.1)
    _, stats = encode_texts_with_stats(encoder, texts, "doc", cache=cache, progress=False)
    assert not stats.cache_hit
    assert len(list(cache.directory.glob("*.npy"))) == 5 and not list(cache.directory.glob(".*"))
    meta = json.loads(next(cache.directory.glob("*.json")).read_text())
    assert set(meta["inputs"]) >= {"weights", "texts", "side", "max_length", "prefix", "pooling", "precision"}
    broken = next(cache.directory.glob("*.npy"))
    broken.write_bytes(b"not an array")
    assert cache.get(broken.stem) is None
    assert texts_fingerprint(["ab", "c"]) != texts_fingerprint(["a", "bc"])


@pytest.mark.parametrize(("chunk", "q_chunk"), [(16384, 1024), (7, 3), (1, 1)])
def test_exact_topk_matches_full_sort(chunk: int, q_chunk: int) -> None:
    generator = torch.Generator().manual_seed(0)
    queries, docs = torch.randn(11, 8, generator=generator), torch.randn(50, 8, generator=generator)
    scores, indices = exact_topk(queries, docs, 5, chunk_size=chunk, query_chunk_size=q_chunk)
    full = queries @ docs.T
    ref_scores, ref_indices = full.sort(dim=1, descending=True)
    assert torch.allclose(scores, ref_scores[:, :5]) and torch.equal(indices, ref_indices[:, :5])
    all_scores, _ = exact_topk(queries, docs, 500, chunk_size=chunk, query_chunk_size=q_chunk)
    assert all_scores.shape == (11, 50)
    if FAISS_AVAILABLE:
        f_scores, f_indices = faiss_topk(queries, docs, 5)
        assert torch.allclose(f_scores, scores, atol=1e-5) and torch.equal(f_indices, indices)


def _dataset() -> RetrievalDataset:
    texts = _texts(30)
    corpus = {f"p{i}": Passage(f"p{i}", text, title=f"t{i % 4}") for i, text in enumerate(texts)}
    corpus["q0"] = Passage("q0", texts[0])  # a passage whose id equals a query id: a self-hit to drop
    queries = {f"q{i}": Query(f"q{i}", " ".join(texts[3 * i].split()[:4])) for i in range(6)}
    qrels = {f"q{i}": {f"p{3 * i}": 1, f"p{3 * i + 1}": 2, f"p{3 * i + 2}": 0} for i in range(5)}
    qrels["q5"] = {"p29": 0}  # no relevant judgment: not evaluated
    return RetrievalDataset("synthetic", corpus, {"test": RetrievalSplit(queries, qrels)})


def test_evaluate_retrieval_scores_its_own_run(encoder: DualEncoder, tmp_path: Path) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    dataset = _dataset()
    cache = EmbeddingCache(tmp_path / "emb")
    result = evaluate_retrieval(encoder, dataset, "test", k=20, batch_size=4, cache=cache)
    assert set(result.metrics) == set(METRICS) and set(result.per_query) == set(METRICS)
    assert sorted(result.run) == [f"q{i}" for i in range(5)]
    assert all(len(hits) == 20 and qid not in hits for qid, hits in result.run.items())
    aggregate, _ = evaluate_run(dataset.split("test").qrels, result.run)
    assert all(result.metrics[name] == pytest.approx(aggregate[name]) for name in METRICS)
    reference = pytrec_eval.RelevanceEvaluator(dataset.split("test").qrels, {"ndcg_cut.10"}).evaluate(
        result.run
    )
    assert result.per_query["ndcg@10"] == pytest.approx({q: v["ndcg_cut_10"] for q, v in reference.items()})
    cached = evaluate_retrieval(encoder, dataset, "test", k=20, cache=cache).run  # corpus from the cache
    assert all(cached[qid] == pytest.approx(hits, abs=1e-6) for qid, hits in result.run.items())

    sub = ["p0", "p1", "p4", "p9"]
    small = evaluate_retrieval(encoder, dataset, "test", k=100, corpus_ids=sub)
    assert all(set(hits) <= set(sub) for hits in small.run.values())
    assert small.per_query["recall@100"]["q0"] == 1.0 and small.per_query["recall@100"]["q2"] == 0.0
    with pytest.raises(DataError, match="not in dataset"):
        evaluate_retrieval(encoder, dataset, "test", corpus_ids=["nope"])


def test_queries_longer_than_query_max_length_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Passage-like queries are not cut silently: the evaluation prints and records how many were cut."""
    short = DualEncoder.from_config(
        EncoderConfig(name="tiny", source="tiny", name_or_path="tiny", query_max_length=4)
    )
    dataset = _dataset()
    texts = [dataset.split("test").queries[f"q{i}"].text for i in range(5)]
    cut = short.count_truncated(texts, "query")
    assert cut == sum(len(ids) > 4 for ids in short.tokenizer(texts)["input_ids"]) > 0
    assert all(len(ids) <= 4 for ids in short.token_ids(texts, "query"))
    result = evaluate_retrieval(short, dataset, "test", k=5)
    assert result.stats["queries_truncated"] == cut
    assert f"{cut} of 5 queries of 'synthetic' split 'test' are longer than model.query_max_length=4" in (
        capsys.readouterr().out
    )
    assert (
        evaluate_retrieval(
            DualEncoder.from_config(
                EncoderConfig(name="tiny", source="tiny", name_or_path="tiny", query_max_length=64)
            ),
            dataset,
            "test",
            k=5,
        ).stats["queries_truncated"]
        == 0
    )


def test_dev_subcorpus_ids_is_fixed_and_seeded() -> None:
    dataset = _dataset()
    ids = dev_subcorpus_ids(dataset, "test", n_random=5, seed=0, extra_ids=["p25", "missing"])
    judged = {pid for rels in dataset.split("test").qrels.values() for pid in rels}
    assert judged | {"p25"} <= set(ids) and "missing" not in ids and len(ids) == len(judged) + 1 + 5
    assert ids == dev_subcorpus_ids(dataset, "test", n_random=5, seed=0, extra_ids=["p25"]) == sorted(ids)
    assert ids != dev_subcorpus_ids(dataset, "test", n_random=5, seed=1, extra_ids=["p25"])
    assert len(dev_subcorpus_ids(dataset, "test", n_random=10_000)) == len(dataset.corpus)


def _hotpot_passages(root: Path, n: int) -> list[str]:
    texts = []
    with open(root / "hotpotqa_distractor_subset" / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.append(f"{row['title']}. {row['text']}" if row.get("title") else row["text"])
            if len(texts) == n:
                break
    return texts


@pytest.mark.slow
@pytest.mark.shared_data
def test_minilm_bf16_agrees_with_fp32_on_real_text(shared_data_dir: Path) -> None:
    """Issue #8's check for bf16 inference: cosine >= 0.99 per text against fp32 (64 real passages)."""
    minilm = DualEncoder.from_config(EncoderConfig())
    texts = _hotpot_passages(shared_data_dir, 64)
    fp32 = encode_texts(minilm, texts, "doc", batch_size=32, progress=False)
    bf16 = encode_texts(minilm, texts, "doc", batch_size=32, precision="bf16", progress=False)
    assert F.cosine_similarity(fp32, bf16).min() >= 0.99
