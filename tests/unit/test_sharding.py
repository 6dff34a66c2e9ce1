"""Shard ranges, shard cache keys and the exact merge of per-shard top-k lists."""

from __future__ import annotations

import pytest
import torch

from causalneg.errors import ConfigError
from causalneg.evaluation.index import IndexConfig, search_shard
from causalneg.evaluation.search import exact_topk
from causalneg.evaluation.sharded import merge_topk, shard_bounds, shard_key


@pytest.mark.parametrize(
    ("n", "size", "world", "expected"),
    [
        (10, 4, 1, [(0, 4), (4, 7), (7, 10)]),
        (10, None, 2, [(0, 5), (5, 10)]),
        (10, 100, 3, [(0, 4), (4, 7), (7, 10)]),  # at least one shard per rank
        (1, None, 2, [(0, 1)]),  # more ranks than rows: empty shards dropped
        (0, 4, 2, []),
    ],
)
def test_shard_bounds(n: int, size: int | None, world: int, expected: list[tuple[int, int]]) -> None:
    assert shard_bounds(n, size, world) == expected


def test_shard_key_keeps_the_whole_key_and_separates_shards() -> None:
    inputs = {"texts": "abc", "side": "doc"}
    assert shard_key("f00d", inputs, 0, 10, 10) == ("f00d", inputs)
    first, meta = shard_key("f00d", inputs, 0, 5, 10)
    second, _ = shard_key("f00d", inputs, 5, 10, 10)
    assert first != second and first != "f00d" and meta["shard"] == [0, 5]


def test_merge_of_shard_topk_is_the_global_topk() -> None:
    g = torch.Generator().manual_seed(0)
    queries, docs = torch.randn(7, 8, generator=g), torch.randn(50, 8, generator=g)
    want_scores, want_rows = exact_topk(queries, docs, 9)
    parts = []
    for start, stop in shard_bounds(50, 12):
        scores, rows = exact_topk(queries, docs[start:stop], 9)
        parts.append((scores, rows + start))
    for order in (parts, parts[::-1]):  # the merge does not depend on the order of the parts
        scores, rows = merge_topk(order, 9)
        assert torch.equal(rows, want_rows)
        assert torch.allclose(scores, want_scores, atol=1e-6, rtol=0)  # a sliced matmul may round differently


def test_merge_breaks_ties_by_row() -> None:
    scores = torch.tensor([[1.0, 0.5]]), torch.tensor([[1.0, 0.5]])
    rows = torch.tensor([[7, 2]]), torch.tensor([[3, 9]])
    merged_scores, merged_rows = merge_topk(list(zip(scores, rows, strict=True)), 3)
    assert merged_rows.tolist() == [[3, 7, 2]]
    assert merged_scores.tolist() == [[1.0, 1.0, 0.5]]


def test_index_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"eval\.index\.kind"):
        IndexConfig(kind="annoy")
    with pytest.raises(ConfigError, match=r"unknown eval\.index keys \['nlists'\]"):
        IndexConfig.from_dict({"nlists": 3})


@pytest.mark.parametrize("kind", ["faiss_flat", "ivf", "hnsw"])
def test_faiss_indexes_find_the_exact_neighbours_on_easy_data(kind: str) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install faiss-cpu)")
    g = torch.Generator().manual_seed(1)
    docs = torch.nn.functional.normalize(torch.randn(400, 16, generator=g), dim=-1)
    queries = docs[:20] + 0.01 * torch.randn(20, 16, generator=g)
    config = IndexConfig(kind=kind, nlist=4, nprobe=4, ef_search=64, gpu="false")  # every cell visited
    scores, rows = search_shard(queries, docs, 5, config)
    want_scores, want_rows = exact_topk(queries, docs, 5)
    assert torch.equal(rows[:, 0], torch.arange(20))
    assert (rows == want_rows).float().mean() >= 0.95
    assert torch.allclose(scores[:, 0], want_scores[:, 0], atol=1e-5)


def test_which_trainer_configs_evaluate_on_several_processes() -> None:
    from causalneg.evaluation.launch import wants_processes

    assert not wants_processes({"accelerator": "cpu", "devices": 1})  # trainer=cpu
    assert wants_processes({"devices": 2, "strategy": "ddp"})
    assert wants_processes({"devices": 1, "num_nodes": 2, "strategy": "ddp"})
    assert wants_processes({"devices": "auto", "strategy": "ddp_spawn"})
    assert not wants_processes({"devices": 2, "strategy": "fsdp"})  # model sharding: one process evaluates
