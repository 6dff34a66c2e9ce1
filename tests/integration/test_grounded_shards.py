"""``generation=grounded`` as a job array: ``generation.shard=0/2`` and ``1/2`` and then ``merge/2`` ≡ one job.

With the scripted backend of the grounded pipeline's tests (it scores the judge's choices, so the judge's request
keys carry ``+scores`` and the merge's replay backend must present the same signature), the merged artifact must
equal the single job's row for row (rows, rejections, decompositions, manifest fingerprint), every request is sent
once, by one shard, and none by the merge; a merge whose shard journals lack a request, generated or scored, fails
with a ``ConfigError`` instead of counting the request as failed. On the real engine (``slow``): the same equality
for shards, and for ``generation.ray.enabled=true`` (two local Ray Data workers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from causalneg.errors import ConfigError
from causalneg.stages import dispatch
from tests.faults.test_generation_faults import read_jsonl
from tests.faults.test_grounded_stage import QUERIES, write_beir
from tests.integration.test_generation_shards import _artifact
from tests.integration.test_grounded_pipeline import ScriptedBackend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def grounded_overrides(root: Path, beir: Path) -> list[str]:
    return [
        "stage=generate",
        f"paths.root_dir={root}",
        f"paths.output_dir={root / 'run'}",
        "dataset=beir",
        f"dataset.path={beir}",
        "dataset.name=mini",
        "dataset.dev_split=null",
        "model=tiny",  # the false-negative guard's encoder runs in every job, as in one job
        "generation=grounded",
        "generation/model=hf",
        "generation.model.path=scripted-llm",
        "generation.limit=4",
        "generation.progress=false",
        "logger.tracking_uri=null",
    ]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[ScriptedBackend]:
    """Every backend the stage builds (a fresh :class:`ScriptedBackend` per job), in order."""
    import causalneg.generation.backends.factory as factory

    built: list[ScriptedBackend] = []

    def build(_cfg: Any) -> ScriptedBackend:
        built.append(ScriptedBackend())
        return built[-1]

    monkeypatch.setattr(factory, "build_backend", build)
    return built


def _without_first(journal: Path, stage: str) -> str:
    """``journal``'s text without its first record of ``stage``."""
    lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
    drop = next(i for i, line in enumerate(lines) if json.loads(line)["stage"] == stage)
    return "".join(lines[:drop] + lines[drop + 1 :])


def test_two_grounded_shards_and_merge_equal_one_job(
    tmp_path: Path, compose_cfg: Callable[[list[str]], Any], scripted: list[ScriptedBackend]
) -> None:
    beir = write_beir(tmp_path / "beir")
    single = dispatch(compose_cfg(grounded_overrides(tmp_path / "one", beir)))
    assert not single["reused"] and single["queries"] == len(QUERIES)
    one_job_sent = scripted[0].sent
    assert len(one_job_sent) == len(set(one_job_sent)) > 0

    root = tmp_path / "array"
    overrides = grounded_overrides(root, beir)
    with pytest.raises(ConfigError, match=r"unfinished \['0/2', '1/2'\]"):
        dispatch(compose_cfg([*overrides, "generation.shard=merge/2"]))
    shards = [dispatch(compose_cfg([*overrides, f"generation.shard={i}/2"])) for i in range(2)]
    assert [s["queries"] for s in shards] == [2, 2]
    assert len(scripted) == 3
    shard_sent = scripted[1].sent + scripted[2].sent
    assert sorted(shard_sent) == sorted(one_job_sent)  # each request sent once, by one shard
    receipt = json.loads(next((root / "artifacts").rglob("shard-0-of-2.json")).read_text())
    assert receipt["backend"] == {"model_id": "scripted-llm", "scores": True}

    journal_dir = root / "artifacts" / "mini" / "generated" / "journal"
    journals = sorted(journal_dir.glob("*.shard-*.jsonl"))
    assert [p.name.split(".")[-2] for p in journals] == ["shard-0-of-2", "shard-1-of-2"]
    per_shard = [{r["query_id"] for r in read_jsonl(p)} for p in journals]
    assert per_shard == [set(sorted(QUERIES)[:2]), set(sorted(QUERIES)[2:])]
    stages = {r["stage"] for p in journals for r in read_jsonl(p)}
    assert {"decompose", "judge"} <= stages

    # A request missing from every shard journal, generated (decompose) or scored (judge), fails the merge by
    # name; the grounded pipeline would otherwise count it as one failed request and publish other rows.
    texts = {p: p.read_text(encoding="utf-8") for p in journals}
    for stage in ("decompose", "judge"):
        holder = next(p for p in journals if any(r["stage"] == stage for r in read_jsonl(p)))
        holder.write_text(_without_first(holder, stage), encoding="utf-8")
        for main in set(journal_dir.glob("*.jsonl")) - set(journals):
            main.unlink()  # the fold target: rebuilt from the shard journals by each merge
        with pytest.raises(ConfigError, match=r"merge of 2 shards: 1 request\(s\) are in no worker/shard"):
            dispatch(compose_cfg([*overrides, "generation.shard=merge/2"]))
        holder.write_text(texts[holder], encoding="utf-8")
    assert len(scripted) == 3  # no merge built an engine

    merged = dispatch(compose_cfg([*overrides, "generation.shard=merge/2"]))
    assert len(scripted) == 3
    assert _artifact(merged) == _artifact(single)
    assert {k: merged[k] for k in ("queries", "requests", "rejections", "negatives_kept")} == {
        k: single[k] for k in ("queries", "requests", "rejections", "negatives_kept")
    }
    assert dispatch(compose_cfg(overrides))["reused"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grounded_shards_on_llamacpp_equal_one_job(
    tmp_path: Path, compose_cfg: Callable[[list[str]], Any]
) -> None:
    """The same equality on the real engine (SmolLM2's GGUF on llama.cpp, which scores choices), two queries."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")
    from tests.faults.test_grounded_resume import journal_lines
    from tests.faults.test_grounded_resume import overrides as llamacpp_overrides

    beir = write_beir(tmp_path / "beir")
    cache = tmp_path / "cache"  # the GGUF is read in place for SmolLM2

    def overrides(root: Path) -> list[str]:
        return [*llamacpp_overrides(root, beir, cache), "generation.limit=2"]

    single = dispatch(compose_cfg(overrides(tmp_path / "one")))
    root = tmp_path / "array"
    for i in range(2):
        dispatch(compose_cfg([*overrides(root), f"generation.shard={i}/2"]))
    journal_dir = root / "artifacts" / "mini" / "generated" / "journal"
    shard_keys = [r["key"] for p in sorted(journal_dir.glob("*.shard-*.jsonl")) for r in read_jsonl(p)]
    one_job_keys = [r["key"] for r in journal_lines(tmp_path / "one")]
    assert sorted(shard_keys) == sorted(one_job_keys) and len(set(one_job_keys)) == len(one_job_keys)
    assert any(r["stage"] == "judge" for r in journal_lines(tmp_path / "one"))  # scored: keys with "+scores"

    merged = dispatch(compose_cfg([*overrides(root), "generation.shard=merge/2"]))
    assert merged["this_run"]["requests"] == 0  # the merge generated nothing
    assert _artifact(merged) == _artifact(single)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grounded_on_ray_workers_equals_one_job(
    tmp_path: Path, compose_cfg: Callable[[list[str]], Any]
) -> None:
    """Two local Ray Data workers (llama.cpp each) journal the requests; the driver's replay is the one job."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'causalneg[ray]')")
    from tests.faults.test_grounded_resume import journal_lines
    from tests.faults.test_grounded_resume import overrides as llamacpp_overrides

    beir = write_beir(tmp_path / "beir")
    cache = tmp_path / "cache"

    def overrides(root: Path) -> list[str]:
        return [*llamacpp_overrides(root, beir, cache), "generation.limit=2"]

    single = dispatch(compose_cfg(overrides(tmp_path / "one")))
    workers = [
        "generation.ray.enabled=true",
        "generation.ray.num_workers=2",
        "generation.ray.num_cpus_per_worker=0.5",
        "generation.ray.batch_size=1",  # one query per call: both workers get one
    ]
    try:
        on_ray = dispatch(compose_cfg([*overrides(tmp_path / "ray"), *workers]))
    finally:
        ray.shutdown()
    assert on_ray["this_run"]["requests"] == 0  # the driver replayed; the workers generated
    journal_dir = tmp_path / "ray" / "artifacts" / "mini" / "generated" / "journal"
    assert not list(journal_dir.glob("*.ray-*.jsonl"))  # folded into the main journal
    keys = [r["key"] for r in journal_lines(tmp_path / "ray")]
    assert sorted(keys) == sorted(r["key"] for r in journal_lines(tmp_path / "one"))  # each request once
    assert any(r["stage"] == "judge" for r in journal_lines(tmp_path / "ray"))  # scored: keys with "+scores"
    assert _artifact(on_ray) == _artifact(single)
