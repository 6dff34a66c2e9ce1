"""Sharded corpus encoding + search: two gloo ranks ≡ one process, and a killed job resumes shard by shard.

The reference is the unsharded path every earlier version used: encode all queries and the whole corpus in one
process, one exact top-k (:func:`exact_topk`). Two ranks (``torch.multiprocessing.spawn``, gloo) each encode
two of four corpus shards into a shared embedding cache, search them and merge; the merged ids must be the
same and the scores equal to 1e-5 (a shard's texts are batched differently, which can change the last bits).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.encoding import encode_texts
from causalneg.evaluation.search import exact_topk
from causalneg.evaluation.sharded import sharded_search
from causalneg.models.encoder import DualEncoder, EncoderConfig
from tests.integration.test_ddp_equivalence import free_port
from tests.integration.test_evaluation import WORDS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WORLD, N_DOCS, N_QUERIES, K, SHARD = 2, 64, 10, 7, 16


def texts(n: int, salt: int) -> list[str]:
    """``n`` distinct texts (duplicates would tie, and ties may be cut either way)."""
    out = [
        " ".join(WORDS[(i * 7 + j * salt + j * j) % len(WORDS)] for j in range(2 + (i * 13) % 30))
        + f" {WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS) + salt) % len(WORDS)]}"
        for i in range(n)
    ]
    assert len(set(out)) == n
    return out


def make_encoder() -> DualEncoder:
    return DualEncoder.from_config(
        EncoderConfig(name="tiny", source="tiny", name_or_path="tiny", doc_max_length=48)
    )


def reference(encoder: DualEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    queries = encode_texts(encoder, texts(N_QUERIES, 3), "query", 16, progress=False)
    docs = encode_texts(encoder, texts(N_DOCS, 5), "doc", 16, progress=False)
    return exact_topk(queries, docs, K)


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        cache = EmbeddingCache(Path(out_dir) / "cache")
        found = sharded_search(
            make_encoder(), texts(N_QUERIES, 3), texts(N_DOCS, 5), K, 16, cache=cache, shard_size=SHARD
        )
        torch.save(
            {"scores": found.scores, "rows": found.rows, "stats": found.rank_stats},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    want_scores, want_rows = reference(make_encoder())
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for result in results:  # every rank ends with the merged result
        assert torch.equal(result["rows"], want_rows)
        assert torch.allclose(result["scores"], want_scores, atol=1e-5, rtol=0)
    stats = results[0]["stats"]
    assert [s["rank"] for s in stats] == [0, 1]
    assert [s["passages_encoded"] for s in stats] == [N_DOCS // 2, N_DOCS // 2]  # 2 shards of 16 each
    assert len(list((tmp_path / "cache").glob("*.npy"))) == N_DOCS // SHARD


class Killed(Exception):
    """Stands for the job being killed right after a shard reached the cache."""


def test_killed_job_resumes_shard_by_shard(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    encoder, cache = make_encoder(), EmbeddingCache(tmp_path / "cache")
    args = (encoder, texts(N_QUERIES, 3), texts(N_DOCS, 5), K, 16)

    def kill_after_second(shard: int) -> None:
        if shard == 1:
            raise Killed

    with pytest.raises(Killed):
        sharded_search(*args, cache=cache, shard_size=SHARD, after_shard=kill_after_second)
    assert len(list(cache.directory.glob("*.npy"))) == 2  # shards 0 and 1 survived the kill

    seen: list[int] = []
    found = sharded_search(*args, cache=cache, shard_size=SHARD, after_shard=seen.append)
    assert seen == [0, 1, 2, 3]
    (stats,) = found.rank_stats
    assert stats["cache_hits"] == 2 and stats["passages_encoded"] == N_DOCS - 2 * SHARD
    want_scores, want_rows = reference(encoder)
    assert torch.equal(found.rows, want_rows)
    assert torch.allclose(found.scores, want_scores, atol=1e-5, rtol=0)

    again = sharded_search(*args, cache=cache, shard_size=SHARD)  # a third run encodes nothing
    assert (
        again.rank_stats[0]["cache_hits"] == N_DOCS // SHARD and again.rank_stats[0]["passages_encoded"] == 0
    )
    assert torch.equal(again.rows, found.rows)
