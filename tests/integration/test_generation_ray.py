"""Ray Data drives generation over two workers (a local ``ray.init()``) and builds the one-process artifact.

The naive method through the openai backend against the fault suite's fake server, as in
``test_generation_shards``: the artifact made with ``generation.ray.enabled=true`` (two Ray Data actors, each
with its own backend and journal) must be the single job's, row for row and with the same fingerprint, and each
request must be sent once.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from causalneg.stages import dispatch
from tests.faults.conftest import mlflow_template, seed_mlflow  # noqa: F401  (fixtures)
from tests.faults.test_generation_faults import FakeServer, generate_overrides, read_jsonl, serve  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="ray is not installed (pip install 'causalneg[ray]', i.e. 'ray[data]')",
    ),
]


@pytest.fixture
def local_ray() -> Iterator[None]:
    import ray

    yield
    ray.shutdown()


def test_ray_workers_build_the_single_job_artifact(
    tmp_path: Path,
    tiny_beir: Path,
    compose_cfg,
    seed_mlflow: Callable[[Path], Path],  # noqa: F811
    serve,  # noqa: F811
    local_ray: None,
) -> None:
    server: FakeServer = serve()
    single = dispatch(compose_cfg(generate_overrides(seed_mlflow(tmp_path / "one"), tiny_beir, server.url)))
    before = server.requests

    root = seed_mlflow(tmp_path / "ray")
    ray_overrides = [
        "generation.ray.enabled=true",
        "generation.ray.num_workers=2",
        "generation.ray.num_cpus_per_worker=0.5",
        "generation.ray.batch_size=8",
    ]
    result = dispatch(compose_cfg([*generate_overrides(root, tiny_beir, server.url), *ray_overrides]))
    assert server.requests - before == single["requests"]  # every request sent once, by some worker

    one, ray_dir = Path(single["artifact"]), Path(result["artifact"])
    assert ray_dir.name == one.name
    for name in ("rows.jsonl", "rejected.jsonl", "decompositions.jsonl"):
        assert read_jsonl(ray_dir / name) == read_jsonl(one / name), name
    fingerprints = [json.loads((d / "manifest.json").read_text())["fingerprint"] for d in (one, ray_dir)]
    assert fingerprints[0] == fingerprints[1]
    journal_dir = root / "artifacts" / "tiny" / "generated" / "journal"
    assert not list(journal_dir.glob("*.ray-*.jsonl"))  # worker journals were folded into the main one
    assert len(read_jsonl(next(journal_dir.glob("*.jsonl")))) == single["requests"]
