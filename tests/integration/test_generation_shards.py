"""Generation as a job array: ``generation.shard=0/2`` and ``1/2`` and then ``merge/2`` ≡ one job, row for row.

Both runs use the naive method through the openai backend against the fault suite's fake OpenAI-compatible
server (answers made from each request's seed, so the same request always gets the same answer). The merged
artifact must sit in the same folder with the same fingerprint, and its rows, rejections and decompositions
must equal the single job's; each shard job writes only its own journal, and a merge with a missing shard fails
naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from causalneg.errors import ConfigError
from causalneg.generation.sharding import ShardSpec, parse_shard, shard_items
from causalneg.stages import dispatch
from tests.faults.conftest import mlflow_template, seed_mlflow  # noqa: F401  (fixtures)
from tests.faults.test_generation_faults import FakeServer, generate_overrides, read_jsonl, serve  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FILES = ("rows.jsonl", "rejected.jsonl", "decompositions.jsonl")


def test_parse_shard() -> None:
    assert parse_shard("1/4") == ShardSpec(1, 4)
    assert parse_shard(" merge / 3 ").is_merge  # type: ignore[union-attr]
    assert parse_shard(None) is None
    for bad in ("4/4", "a/2", "1/0", "1-2"):
        with pytest.raises(ConfigError, match=r"generation\.shard"):
            parse_shard(bad)
    items = list(range(7))
    slices = [shard_items(items, ShardSpec(i, 3)) for i in range(3)]
    assert slices == [[0, 1, 2], [3, 4], [5, 6]]


def _artifact(result: dict[str, Any]) -> dict[str, Any]:
    directory = Path(result["artifact"])
    files = {name: read_jsonl(directory / name) for name in FILES}
    manifest = json.loads((directory / "manifest.json").read_text())
    return {
        "name": directory.name,
        "fingerprint": manifest["fingerprint"],
        "inputs": manifest["inputs"],
        **files,
    }


def test_two_shards_and_merge_equal_one_job(
    tmp_path: Path,
    tiny_beir: Path,
    compose_cfg,
    seed_mlflow: Callable[[Path], Path],  # noqa: F811
    serve,  # noqa: F811
) -> None:
    server: FakeServer = serve()
    single = dispatch(compose_cfg(generate_overrides(seed_mlflow(tmp_path / "one"), tiny_beir, server.url)))
    assert not single["reused"] and single["queries"] == 40

    root = seed_mlflow(tmp_path / "array")
    overrides = generate_overrides(root, tiny_beir, server.url)
    with pytest.raises(ConfigError, match=r"unfinished \['0/2', '1/2'\]"):
        dispatch(compose_cfg([*overrides, "generation.shard=merge/2"]))
    before = server.requests
    shards = [dispatch(compose_cfg([*overrides, f"generation.shard={i}/2"])) for i in range(2)]
    assert [s["queries"] for s in shards] == [20, 20]
    assert server.requests - before == single["requests"]  # each request sent once, by one shard

    journals = sorted((root / "artifacts" / "tiny" / "generated" / "journal").glob("*.shard-*.jsonl"))
    assert [p.name.split(".")[-2] for p in journals] == ["shard-0-of-2", "shard-1-of-2"]
    per_shard = [{r["query_id"] for r in read_jsonl(p)} for p in journals]
    assert not per_shard[0] & per_shard[1] and all(len(q) == 20 for q in per_shard)

    merged = dispatch(compose_cfg([*overrides, "generation.shard=merge/2"]))
    assert server.requests - before == single["requests"]  # the merge sends nothing
    assert _artifact(merged) == _artifact(single)
    assert {k: merged[k] for k in ("queries", "requests", "rejections", "negatives_kept")} == {
        k: single[k] for k in ("queries", "requests", "rejections", "negatives_kept")
    }
    # a plain run with the same overrides now finds the merged artifact and reuses it
    assert dispatch(compose_cfg(overrides))["reused"]
