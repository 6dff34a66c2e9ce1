"""The real data sets in ../shared/data (skipped with a message when absent): counts from its README and
SOURCE.md files, the dataset presets, and BM25 nDCG@10 against the README's orientation numbers.

The README's BM25 is "a plain reference implementation"; ours adds English stemming, which scores a little
higher (measured: HotpotQA 0.762 vs 0.749, SciFact 0.676 vs 0.660, NQ 0.868 vs 0.851; without stemming
HotpotQA gives 0.744), hence the tolerance.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from causalneg.data.mining.bm25 import bm25_run
from causalneg.data.sources.beir import load_beir
from causalneg.evaluation.metrics import evaluate_run
from causalneg.records import RetrievalDataset

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]
CONF = Path(__file__).resolve().parents[2] / "conf"


def counts(ds: RetrievalDataset) -> dict[str, tuple[int, int]]:
    """split -> (queries, judgments)."""
    return {name: (len(s.queries), sum(len(j) for j in s.qrels.values())) for name, s in ds.splits.items()}


def preset(name: str, shared_data_dir: Path) -> RetrievalDataset:
    cfg = OmegaConf.create({"paths": {"shared_data_dir": str(shared_data_dir)}, "dataset": {}})
    cfg.dataset = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    dataset = instantiate(cfg.dataset)
    assert isinstance(dataset, RetrievalDataset)
    return dataset


def bm25_ndcg10(ds: RetrievalDataset, split: str) -> float:
    metrics, _ = evaluate_run(ds.split(split).qrels, bm25_run(ds, split, k=100), k_values=(10,))
    return metrics["ndcg@10"]


def test_hotpotqa_subset_counts_and_bm25(shared_data_dir: Path) -> None:
    started = time.perf_counter()
    ds = preset("hotpotqa", shared_data_dir)
    seconds = time.perf_counter() - started
    assert seconds < 10, f"loading 18.6k passages took {seconds:.1f}s"
    assert ds.name == "hotpotqa" and len(ds.corpus) == 18_619
    assert counts(ds) == {"train": (1153, 2306), "test": (500, 1000), "dev": (282, 564)}
    assert {s: sum(len(v) for v in hn.values()) for s, hn in ds.hard_negatives.items()} == {
        "train": 9198,
        "test": 3931,
        "dev": 2251,
    }
    assert len(ds.answers) == 1935 and all(len(a) == 1 for a in ds.answers.values())
    assert all(len(ds.split("test").positives(q)) == 2 for q in ds.split("test").queries)
    assert bm25_ndcg10(ds, "test") == pytest.approx(0.749, abs=0.025)


def test_scifact_counts_dev_carve_and_bm25(shared_data_dir: Path) -> None:
    ds = load_beir(shared_data_dir / "scifact")
    assert len(ds.corpus) == 5183 and counts(ds) == {"train": (809, 919), "test": (300, 339)}
    assert bm25_ndcg10(ds, "test") == pytest.approx(0.660, abs=0.025)
    carved = preset("scifact", shared_data_dir)  # the preset carves 100 train claims into dev
    assert {name: q for name, (q, _) in counts(carved).items()} == {"train": 709, "dev": 100, "test": 300}


def test_nq_open_oracle_counts_answers_and_bm25(shared_data_dir: Path) -> None:
    ds = load_beir(shared_data_dir / "nq_open_oracle", query_meta="answers.jsonl")
    assert len(ds.corpus) == 2600 and counts(ds) == {"train": (1655, 1655), "test": (1000, 1000)}
    assert len(ds.answers) == 2655 and all(ds.answers[q] for q in ds.split("test").queries)
    assert bm25_ndcg10(ds, "test") == pytest.approx(0.851, abs=0.025)
    assert counts(preset("nq", shared_data_dir))["dev"] == (100, 100)
