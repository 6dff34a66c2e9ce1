"""``python run.py stage=evaluate trainer=ddp trainer.devices=2`` (CPU, gloo) ≡ one process.

Lightning Fabric relaunches ``run.py`` for rank 1 under Hydra; each rank encodes two of the tiny corpus's four
shards and the per-shard top-k lists are merged exactly, so the metrics must equal the one-process run's (to 4
decimals, as on HotpotQA in SCALE.md) and ``encoding.json`` must show both ranks encoding half the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults import run_cli
from tests.faults.conftest import mlflow_template, seed_mlflow  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]


def evaluate(root: Path, beir: Path, *extra: str) -> tuple[dict[str, float], dict, str]:
    run_dir = root / "run"
    args = [
        "stage=evaluate", f"paths.root_dir={root}", f"hydra.run.dir={run_dir}", "dataset=beir",
        f"dataset.path={beir}", "dataset.name=tiny", "model=tiny", "eval.batch_size=16",
        "eval.shard_size=16", "eval.progress=false", *extra,
    ]  # fmt: skip
    done = run_cli(args, timeout=360)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics, json.loads((run_dir / "encoding.json").read_text()), done.stdout


def test_two_ranks_give_the_one_process_metrics(
    tmp_path: Path,
    tiny_beir: Path,
    seed_mlflow: Callable[[Path], Path],  # noqa: F811
) -> None:
    one, one_encoding, _ = evaluate(seed_mlflow(tmp_path / "one"), tiny_beir)
    two, two_encoding, stdout = evaluate(
        seed_mlflow(tmp_path / "two"),
        tiny_beir,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
    )
    assert set(one) == set(two)
    assert {k: round(v, 4) for k, v in two.items()} == {k: round(v, 4) for k, v in one.items()}
    assert one_encoding["world_size"] == 1 and one_encoding["ranks"][0]["passages_encoded"] == 64
    assert two_encoding["world_size"] == 2
    assert [r["passages_encoded"] for r in two_encoding["ranks"]] == [32, 32]
    assert all(r["passages_per_second"] > 0 for r in two_encoding["ranks"])
    assert "rank 1: 32 passages" in stdout


def mined_rows(root: Path) -> dict[str, list[dict]]:
    paths = sorted((root / "artifacts").rglob("rows.jsonl"))
    assert paths, f"no mined artifact under {root}"
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines()] for p in paths}


def test_dense_mining_on_two_ranks_equals_one_process(
    tmp_path: Path,
    tiny_beir: Path,
    seed_mlflow: Callable[[Path], Path],  # noqa: F811
) -> None:
    runs = {}
    for name, extra in {
        "one": [],
        "two": ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"],
    }.items():
        root = seed_mlflow(tmp_path / name)
        args = [
            "stage=mine", "mining=dense", f"paths.root_dir={root}", f"hydra.run.dir={root / 'run'}",
            "dataset=beir", f"dataset.path={tiny_beir}", "dataset.name=tiny", "dataset.dev_split=dev",
            "model=tiny", "mining.top_k=5", "mining.relative_margin=null", "mining.dense.shard_size=16", *extra,
        ]  # fmt: skip
        done = run_cli(args, timeout=360)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        runs[name] = mined_rows(root)
    assert (
        runs["one"].keys() == runs["two"].keys() and len(runs["one"]) == 2
    )  # train and dev, same fingerprints
    for name, rows in runs["one"].items():
        assert sum(len(r["candidates"]) for r in rows) > 0, name
        for a, b in zip(rows, runs["two"][name], strict=True):
            assert a["query_id"] == b["query_id"]
            assert [c["id"] for c in a["candidates"]] == [c["id"] for c in b["candidates"]]
            assert all(
                abs(x["score"] - y["score"]) < 1e-5
                for x, y in zip(a["candidates"], b["candidates"], strict=True)
            )
