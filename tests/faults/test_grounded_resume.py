"""A grounded-edit run on the real llama.cpp engine (SmolLM2's GGUF) is SIGKILLed mid-run and resumed: the journal
keeps whole lines, nothing is sent twice, and the resumed artifact equals an uninterrupted run, row for row."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from causalneg.artifacts import is_complete
from causalneg.stages import dispatch
from tests.faults import start_cli
from tests.faults.test_grounded_stage import QUERIES, write_beir

pytestmark = [pytest.mark.integration, pytest.mark.slow]
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (make install builds it)"
)


def overrides(root: Path, beir: Path, cache: Path) -> list[str]:
    return [
        "stage=generate",
        f"paths.root_dir={root}",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={root / 'run'}",
        f"paths.output_dir={root / 'run'}",  # in-process dispatch has no HydraConfig
        "dataset=beir",
        f"dataset.path={beir}",
        "dataset.name=mini",
        "dataset.dev_split=null",
        "generation=grounded",
        "generation/backend=llamacpp",
        "generation/model=smollm2",
        "generation.backend.n_threads=1",  # immune to a shared CPU (no thread barrier to stall)
        "generation.backend.n_ctx=2048",
        "generation.limit=4",
        "generation.max_retries=0",
        "generation.min_kept=1",  # no follow-up requests: resume is under test, not yield
        "generation.fallback_spans=0",
        "generation.decompose.temperature=0",
        "generation.substitute.temperature=0",
        "generation.verify.relative_margin=null",  # no encoder in this test: the LLM calls are under test
        "generation.progress=false",
        "logger.tracking_uri=null",
    ]


def journal_lines(root: Path) -> list[dict[str, Any]]:
    files = list((root / "artifacts" / "mini" / "generated" / "journal").glob("*.jsonl"))
    if not files:
        return []
    text = files[0].read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the journal ends in a torn line"
    return [json.loads(line) for line in text.splitlines()]


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (Path(result["artifact"]) / "rows.jsonl").read_text().splitlines()]


def test_sigkilled_grounded_run_resumes_without_duplicate_or_lost_rows(tmp_path: Path, compose_cfg) -> None:
    beir = write_beir(tmp_path / "beir")
    cache = tmp_path / "cache"  # the GGUF is read in place for SmolLM2: nothing large is written here
    killed = tmp_path / "killed"
    child = start_cli(overrides(killed, beir, cache), tmp_path / "child.log")
    deadline = time.monotonic() + 600
    while len(journal_lines(killed)) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "child.log").read_text()[-3000:]
    before = journal_lines(killed)
    assert len(before) >= 3 and len({r["key"] for r in before}) == len(before)
    generated = killed / "artifacts" / "mini" / "generated"
    assert not any(is_complete(d) for d in generated.iterdir() if d.name != "journal")

    resumed = dispatch(compose_cfg(overrides(killed, beir, cache)))
    after = journal_lines(killed)
    assert [r["key"] for r in after[: len(before)]] == [r["key"] for r in before]  # finished records kept
    assert len({r["key"] for r in after}) == len(after)  # nothing sent twice
    clean = dispatch(compose_cfg(overrides(tmp_path / "clean", beir, cache)))
    assert rows_of(resumed) == rows_of(clean)
    assert [r["query_id"] for r in rows_of(resumed)] == sorted(QUERIES)  # no query lost
    assert {r["key"] for r in journal_lines(tmp_path / "clean")} == {r["key"] for r in after}
    assert dispatch(compose_cfg(overrides(killed, beir, cache)))["reused"]
