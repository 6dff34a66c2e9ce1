"""The request journal: stable keys, resume without loss or duplicates, torn lines, SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from causalneg.errors import DataError
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.schemas import naive_schema
from causalneg.generation.store import RequestStore, derive_seed, request_key

SCHEMA = naive_schema(1)
SAMPLING = SamplingConfig(max_new_tokens=8)


class EchoBackend:
    """Deterministic outputs; counts the requests it sees; fails keys listed in ``fail``; raises after ``calls``."""

    name, model_id = "echo", "echo-model"

    def __init__(self, calls: int | None = None, fail: Sequence[str] = ()) -> None:
        self.calls, self.fail, self.seen = calls, set(fail), []  # type: ignore[var-annotated]

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        if self.calls is not None:
            if self.calls == 0:
                raise RuntimeError("crash")
            self.calls -= 1
        self.seen += [r.key for r in requests]
        return [
            RawOutput(r.key, "", 0, error="timeout")
            if r.key in self.fail
            else RawOutput(
                r.key, json.dumps({"negatives": [{"text": f"t{r.seed}"}]}), 3, finish_reason="stop"
            )
            for r in requests
        ]

    def close(self) -> None:
        pass


def make_requests(n: int) -> tuple[list[GenerationRequest], list[dict[str, object]]]:
    requests = [
        GenerationRequest(request_key(row=f"q{i}", stage="naive"), [{"role": "user", "content": f"q{i}"}], i)
        for i in range(n)
    ]
    return requests, [{"query_id": f"q{i}", "stage": "naive"} for i in range(n)]


def journal_keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()]


def test_keys_and_seeds_are_stable() -> None:
    assert request_key(a=1, b={"x": [1, 2]}) == request_key(b={"x": [1, 2]}, a=1)
    assert request_key(a=1) != request_key(a=2)
    assert derive_seed(0, "q1", "decompose", 0) == derive_seed(0, "q1", "decompose", 0)
    assert derive_seed(0, "q1", "decompose", 0) != derive_seed(0, "q1", "decompose", 1)
    assert 0 <= derive_seed("x") < 2**63


def test_resume_after_a_crash_skips_finished_and_duplicates_nothing(tmp_path: Path) -> None:
    requests, meta = make_requests(7)
    journal = tmp_path / "j.jsonl"
    with pytest.raises(RuntimeError, match="crash"):
        RequestStore(journal).run(
            requests, meta, EchoBackend(calls=2), SCHEMA, SAMPLING, flush_every=2, progress=False
        )
    assert journal_keys(journal) == [r.key for r in requests[:4]]  # two chunks were made durable
    backend = EchoBackend()
    store = RequestStore(journal)
    outputs = store.run(requests, meta, backend, SCHEMA, SAMPLING, flush_every=2, progress=False)
    assert backend.seen == [r.key for r in requests[4:]]
    assert [o.key for o in outputs] == [r.key for r in requests]
    assert sorted(journal_keys(journal)) == sorted(r.key for r in requests)
    assert store.fresh["requests"] == 3
    record = store.records[requests[0].key]
    assert record["query_id"] == "q0" and record["seed"] == 0 and record["sampling"]["max_new_tokens"] == 8
    again = EchoBackend()
    RequestStore(journal).run(requests, meta, again, SCHEMA, SAMPLING, progress=False)
    assert again.seen == []


def test_failed_requests_are_not_journaled(tmp_path: Path) -> None:
    requests, meta = make_requests(3)
    store = RequestStore(tmp_path / "j.jsonl")
    outputs = store.run(requests, meta, EchoBackend(fail=[requests[1].key]), SCHEMA, SAMPLING, progress=False)
    assert outputs[1].error == "timeout"
    assert requests[1].key not in RequestStore(tmp_path / "j.jsonl").records
    retry = EchoBackend()
    RequestStore(tmp_path / "j.jsonl").run(requests, meta, retry, SCHEMA, SAMPLING, progress=False)
    assert retry.seen == [requests[1].key]


def test_torn_last_line_is_ignored_then_cut(tmp_path: Path) -> None:
    requests, meta = make_requests(2)
    journal = tmp_path / "j.jsonl"
    RequestStore(journal).run(requests[:1], meta[:1], EchoBackend(), SCHEMA, SAMPLING, progress=False)
    with open(journal, "a") as handle:
        handle.write('{"key": "torn", "te')  # killed mid-write
    store = RequestStore(journal)
    assert list(store.records) == [requests[0].key]
    store.run(requests, meta, EchoBackend(), SCHEMA, SAMPLING, progress=False)
    assert journal_keys(journal) == [requests[0].key, requests[1].key]


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"key": "a", "text": ""}\nnot json\n{"key": "b", "text": ""}\n')
    with pytest.raises(DataError, match=r"j.jsonl:2"):
        RequestStore(journal)


def test_backend_must_return_one_output_per_request(tmp_path: Path) -> None:
    class Short(EchoBackend):
        def generate(
            self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
        ) -> list[RawOutput]:
            return super().generate(requests, schema, sampling)[:-1]

    requests, meta = make_requests(2)
    with pytest.raises(RuntimeError, match="returned 1 outputs for 2"):
        RequestStore(tmp_path / "j.jsonl").run(requests, meta, Short(), SCHEMA, SAMPLING, progress=False)


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from unit.test_generation_store import EchoBackend, make_requests, SCHEMA, SAMPLING
    from causalneg.generation.store import RequestStore

    class Slow(EchoBackend):
        def generate(self, requests, schema, sampling):
            time.sleep(0.05)
            return super().generate(requests, schema, sampling)

    requests, meta = make_requests(400)
    RequestStore(sys.argv[1]).run(requests, meta, Slow(), SCHEMA, SAMPLING, flush_every=1, progress=False)
    """
)


def test_sigkill_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).resolve().parents[1])))
    child = subprocess.Popen(
        [sys.executable, str(script), str(journal)], env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 5):
        assert child.poll() is None, "child exited early"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = RequestStore(journal).records
    assert 5 <= len(finished) < 400
    requests, meta = make_requests(400)
    backend = EchoBackend()
    RequestStore(journal).run(requests, meta, backend, SCHEMA, SAMPLING, flush_every=50, progress=False)
    assert not set(backend.seen) & set(finished)
    keys = journal_keys(journal)
    assert len(keys) == len(set(keys)) == 400
