"""Generation under faults: outputs that pass the grammar but fail validation, a server that times out,
answers HTTP 500 or closes the connection, and a generate process killed with SIGKILL mid-batch.

Outcome in every case: the failure is recorded per request with its reason (``rejected.jsonl``), retries use a
fresh recorded seed and a higher temperature, re-running redoes exactly the unfinished requests (the journal
never loses or duplicates a finished one), and what is on disk always parses. The OpenAIBackend's own retry
and backoff policy is tested in tests/integration/test_openai_backend.py; here it runs inside the pipeline
and the generate stage against a local fake server (:class:`FakeServer`), and a fake in-process backend
(:class:`ScriptedBackend`) stands in for the LLM where only the pipeline is under test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from causalneg.artifacts import is_complete
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.filters import FilterConfig
from causalneg.generation.pipeline import PipelineSettings, run_pipeline
from causalneg.generation.prompting import PromptInputs
from causalneg.generation.schemas import Decomposition, PerturbationOutput
from causalneg.generation.store import RequestStore
from causalneg.stages import dispatch
from tests.conftest import send_truncated_response
from tests.faults import start_cli

pytestmark = pytest.mark.integration

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "zu",
    "re",
    "ta",
    "vo",
    "ni",
    "shu",
    "pe",
    "gra",
    "dol",
    "ix",
    "bem",
    "quo",
    "rif",
]


def pseudo_text(seed: int, words: int = 14) -> str:
    """A passage-like text of invented words: passes every negative filter (no copy, no meta talk, no loop)."""
    rng = random.Random(seed)
    body = " ".join("".join(rng.choices(SYLLABLES, k=3)) for _ in range(words))
    return body.capitalize() + "."


# -- the pipeline with a scripted backend ----------------------------------------------------------------------


def decomposition(any_critical: bool) -> str:
    """Four nodes; N1 critical with strategies S1 (entity_shift), S2 (attribute_shift) when ``any_critical``.
    Without a critical node the JSON still matches the decoding grammar but fails validation."""
    nodes = []
    for i in range(1, 5):
        critical = any_critical and i == 1
        strategies = [
            {"id": f"S{k}", "type": kind, "direction": f"shift {kind}", "why_not_answer": "different entity"}
            for k, kind in ((1, "entity_shift"), (2, "attribute_shift"))
        ]
        nodes.append(
            {
                "node_id": f"N{i}",
                "facet_type": "entity",
                "content": f"requirement {i}",
                "critical": critical,
                "break_strategies": strategies if critical else [],
            }
        )
    info = {"core_need": "a need", "how_positive_answers": "it says so", "answer_boundary": "the fact"}
    return json.dumps({"query_info": info, "chain_nodes": nodes})


def perturbation(seed: int) -> str:
    """Two negatives: one breaking N1/S1, one naming strategy S3, which N1 does not have (invalid_reference)."""
    negatives = [
        {
            "node_id": "N1",
            "strategy_id": strategy,
            "strategy_type": "entity_shift",
            "source": "generated_from_scratch",
            "text": pseudo_text(seed + k),
            "break_explanation": "names another entity",
        }
        for k, strategy in enumerate(("S1", "S3"))
    ]
    return json.dumps({"negatives": negatives})


class ScriptedBackend:
    """A GenerationBackend whose first decomposition per query has no critical node; ``calls`` records
    (stage, query, seed, temperature) of every request it receives."""

    name = "scripted"
    model_id = "scripted-llm"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, float]] = []

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        outputs = []
        for request in requests:
            stage = "decompose" if schema is Decomposition else "perturb"
            query = request.messages[-1]["content"]
            first = not any(c[0] == stage and c[1] == query for c in self.calls)
            self.calls.append((stage, query, request.seed, sampling.temperature))
            if stage == "decompose":
                text = decomposition(any_critical=not first)
            else:
                assert issubclass(schema, PerturbationOutput)
                text = perturbation(request.seed % 10_000)
            outputs.append(RawOutput(request.key, text, output_tokens=len(text) // 4, finish_reason="stop"))
        return outputs

    def close(self) -> None:
        return None


class MustNotBeCalled(ScriptedBackend):
    def generate(self, requests: Sequence[GenerationRequest], *args: Any) -> list[RawOutput]:
        raise AssertionError(f"a re-run sent {len(requests)} finished request(s) again")


def prompt_items(n: int = 3) -> list[PromptInputs]:
    return [
        PromptInputs(
            query_id=f"q{i}",
            query=f"who designed bridge number {i}",
            positive_id=f"p{i}",
            positive=f"Bridge {i} was designed by the engineer Vela{i} and opened in the spring.",
        )
        for i in range(n)
    ]


def pipeline_settings() -> PipelineSettings:
    sampling = {s: SamplingConfig(max_new_tokens=256, temperature=0.7) for s in ("decompose", "perturb")}
    return PipelineSettings(
        method="causalneg",
        num_negatives=2,
        max_retries=2,
        temperature_step=0.2,
        progress=False,
        sampling=sampling,
    )


def test_valid_json_failing_validation_is_rejected_retried_and_journaled(tmp_path: Path) -> None:
    items, backend = prompt_items(), ScriptedBackend()
    store = RequestStore(tmp_path / "journal.jsonl")
    filters = FilterConfig(max_positive_similarity=None)
    result = run_pipeline(items, backend, store, pipeline_settings(), filters)

    # Each query's first decomposition parsed as JSON but failed the validator: recorded with reason and raw.
    schema_rejections = [r for r in result.rejected if r["reason"] == "schema_violation"]
    assert len(schema_rejections) == len(items)
    for row in schema_rejections:
        assert (row["stage"], row["attempt"]) == ("decompose", 0)
        assert "no node is critical" in row["detail"]
        assert json.loads(row["raw"])["chain_nodes"]  # the raw output is kept, not dropped
    # ... and was retried with a fresh seed and temperature + step; the kept analysis is attempt 1's.
    decompose_calls = [c for c in backend.calls if c[0] == "decompose"]
    assert len(decompose_calls) == 2 * len(items)
    for query in {c[1] for c in decompose_calls}:
        first, second = [c for c in decompose_calls if c[1] == query]
        assert first[2] != second[2] and second[3] == pytest.approx(first[3] + 0.2)
    assert all(d["attempt"] == 1 for d in result.decompositions)

    # A perturbed negative naming a strategy its decomposition lacks is rejected on its own; its sibling is kept.
    invalid = [r for r in result.rejected if r["reason"] == "invalid_reference"]
    assert len(invalid) == len(items) and all("no strategy S3 on node N1" in r["detail"] for r in invalid)
    assert [len(row["negatives"]) for row in result.rows] == [1] * len(items)
    assert result.counts["rejections"] == {"invalid_reference": 3, "schema_violation": 3}
    assert result.counts["validity_rate"] == pytest.approx(6 / 9, abs=1e-4)

    # Invalid outputs are finished requests: journaled, so a re-run reproduces everything without the LLM.
    again = run_pipeline(items, MustNotBeCalled(), RequestStore(store.path), pipeline_settings(), filters)
    assert again.rows == result.rows and again.rejected == result.rejected


# -- the generate stage against a fake OpenAI-compatible server -------------------------------------------------


class FakeServer(ThreadingHTTPServer):
    """A chat-completions server answering naive-schema JSON made from each request's seed (the same request
    always gets the same answer). ``faults`` maps a word of the query to a fault, while ``healthy`` is False:
    ``500`` (HTTP 500), ``timeout`` (answers after the client's timeout), ``close`` (closes the connection
    mid-body). ``kill_at = (n, pid)`` SIGKILLs process ``pid`` when the n-th request arrives (in flight)."""

    daemon_threads = True

    def __init__(self, faults: dict[str, str] | None = None, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.faults, self.delay_s, self.healthy = dict(faults or {}), delay_s, False
        self.kill_at: tuple[int, int] | None = None
        self.queries: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        return sum(self.queries.values())


class FakeHandler(BaseHTTPRequestHandler):
    server: FakeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        query = next((line for line in prompt.splitlines() if "what about" in line), prompt)
        with self.server.lock:
            self.server.queries[query] += 1
            count = self.server.requests
        if self.server.kill_at is not None and count == self.server.kill_at[0]:
            os.kill(self.server.kill_at[1], signal.SIGKILL)  # this request is in flight: its chunk is lost
            return
        fault = (
            "" if self.server.healthy else next((f for w, f in self.server.faults.items() if w in query), "")
        )
        time.sleep(self.server.delay_s)
        if fault == "500":
            return self.send(500, b'{"error": "internal"}')
        if fault == "timeout":
            time.sleep(1.0)  # the client gives up after 0.4 s
        if fault == "close":
            send_truncated_response(self)
            return None
        n = body["response_format"]["json_schema"]["schema"]["properties"]["negatives"]["maxItems"]
        content = json.dumps({"negatives": [{"text": pseudo_text(body["seed"] + k)} for k in range(n)]})
        completion = {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"completion_tokens": len(content) // 4},
        }
        return self.send(200, json.dumps(completion).encode())

    def send(self, status: int, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out first


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(**kwargs: Any) -> FakeServer:
        server = FakeServer(**kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def generate_overrides(root: Path, beir: Path, url: str) -> list[str]:
    """``stage=generate`` of the naive method through the openai backend; 40 training queries, 2 negatives."""
    return [
        "stage=generate",
        f"paths.root_dir={root}",
        f"paths.output_dir={root / 'run'}",
        "dataset=beir",
        f"dataset.path={beir}",
        "dataset.name=tiny",
        "generation=naive",
        "generation/backend=openai",
        "generation/model=hf",
        "generation.model.path=fake-llm",
        f"generation.backend.base_url={url}",
        "generation.backend.timeout_s=0.4",
        "generation.backend.max_retries=1",
        "generation.backend.backoff_base_s=0.01",
        "generation.backend.backoff_max_s=0.05",
        "generation.num_negatives=2",
        "generation.max_retries=1",
        "generation.flush_every=4",
        "generation.progress=false",
        "generation.filters.max_positive_similarity=null",
        "generation.filters.length_from_corpus=false",  # fake texts (102-123 chars) > the tiny corpus band (77-99)
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be one complete JSON object (a torn or corrupt line fails the test)."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} ends in a torn line"
    return [json.loads(line) for line in text.splitlines()]


def artifact_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return read_jsonl(Path(result["artifact"]) / "rows.jsonl")


FAULTY = {"glacier": "500", "violin": "timeout", "chess": "close"}


def test_server_faults_are_recorded_per_request_and_a_rerun_retries_only_them(
    tmp_path: Path, tiny_beir: Path, compose_cfg, seed_mlflow, serve: Callable[..., FakeServer]
) -> None:
    server = serve(faults=FAULTY)
    cfg = compose_cfg(generate_overrides(seed_mlflow(tmp_path / "faulty"), tiny_beir, server.url))
    first = dispatch(cfg)

    # Every request of a faulty query failed twice at the HTTP level (1 retry) in each of its 2 pipeline
    # attempts; each failure is one rejected record with its reason, and the rows of the others are complete.
    rows, rejected = artifact_rows(first), read_jsonl(Path(first["artifact"]) / "rejected.jsonl")
    assert len(rows) == 40
    faulty = {r["query_id"] for r in rows if any(word in r["query_id"] for word in FAULTY)}
    assert len(faulty) == 15
    assert all((r["negatives"] == []) == (r["query_id"] in faulty) for r in rows)
    assert {r["reason"] for r in rejected} == {"backend_error"}
    assert Counter(r["query_id"] for r in rejected) == {q: 2 for q in faulty}
    assert first["rejections"] == {"backend_error": 30}
    details = {word: {r["detail"] for r in rejected if word in r["query_id"]} for word in FAULTY}
    assert all("HTTP 500" in d for d in details["glacier"])
    assert all("timeout" in d for d in details["violin"])
    assert all("connection error" in d for d in details["chess"])
    # Failed requests are not journaled (a re-run must retry them); every line of the journal parses.
    journal = next((tmp_path / "faulty" / "artifacts" / "tiny" / "generated" / "journal").glob("*.jsonl"))
    assert len({r["key"] for r in read_jsonl(journal)}) == len(read_jsonl(journal)) == 25

    # The server recovers; the same command retries exactly the 15 failed requests (attempt 0 again).
    server.healthy, before = True, server.requests
    second = dispatch(cfg)
    assert not second["reused"] and server.requests - before == 15
    assert all(len(r["negatives"]) == 2 for r in artifact_rows(second))
    assert [r for r in artifact_rows(second) if r["query_id"] not in faulty] == [
        r for r in rows if r["query_id"] not in faulty
    ]
    assert len(read_jsonl(journal)) == 40
    # The result equals a run that never saw a fault; a third run reuses the artifact and sends nothing.
    clean = dispatch(compose_cfg(generate_overrides(seed_mlflow(tmp_path / "clean"), tiny_beir, server.url)))
    assert artifact_rows(second) == artifact_rows(clean)
    before = server.requests
    assert dispatch(cfg)["reused"] and server.requests == before


def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, tiny_beir: Path, compose_cfg, seed_mlflow, serve: Callable[..., FakeServer]
) -> None:
    """``python run.py stage=generate`` is SIGKILLed while its 7th request is in flight (chunks of 4: the first
    chunk is journaled, the second is lost); the same command then finishes the job."""
    server = serve()
    root = seed_mlflow(tmp_path / "killed")
    overrides = generate_overrides(root, tiny_beir, server.url)
    args = [o for o in overrides if not o.startswith("paths.output_dir")] + [f"hydra.run.dir={root / 'run'}"]
    log = tmp_path / "child.log"
    child = start_cli(args, log)
    server.kill_at = (7, child.pid)
    assert child.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    server.kill_at = None

    generated = root / "artifacts" / "tiny" / "generated"
    journal = next((generated / "journal").glob("*.jsonl"))
    kept = read_jsonl(journal)
    assert len(kept) == 4 and len({r["key"] for r in kept}) == 4  # only the finished chunk, whole lines
    assert not any(is_complete(d) for d in generated.iterdir())  # no artifact was published
    # A kill during the journal's own write leaves a torn last line (simulated: the kill above hit between
    # writes); a re-run must ignore it and cut it before appending.
    journal_bytes = journal.read_bytes()
    with open(journal, "ab") as handle:
        handle.write(b'{"key": "torn-by-a-kill", "text": "{\\"negat')

    before = server.requests
    resumed = dispatch(compose_cfg(overrides))
    assert server.requests - before == 36  # the 4 finished requests were not sent again
    final = read_jsonl(journal)
    assert journal.read_bytes().startswith(journal_bytes)  # finished records untouched, torn tail cut
    assert len(final) == 40 and len({r["key"] for r in final}) == 40
    clean = dispatch(compose_cfg(generate_overrides(seed_mlflow(tmp_path / "clean"), tiny_beir, server.url)))
    assert artifact_rows(resumed) == artifact_rows(clean)


# -- SIGTERM: the backend (and a vLLM engine's processes) is shut down, not left running --------------------------


class SigtermMidGenerate:
    """A backend that sends this process SIGTERM from inside ``generate`` (a scheduler stopping the job)."""

    name, model_id = "sigterm", "sigterm-llm"

    def __init__(self) -> None:
        self.closed = False

    def generate(self, requests: Sequence[GenerationRequest], *args: Any) -> list[RawOutput]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal's handler raises in here
        raise AssertionError("SIGTERM did not interrupt generation")

    def close(self) -> None:
        self.closed = True


def test_sigterm_during_generate_closes_the_backend(
    tmp_path: Path, tiny_beir: Path, compose_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's default SIGTERM action ends the process on the spot: no ``finally`` runs, and vLLM's EngineCore
    child outlives it. Here a stand-in for the default action records that it was reached instead of dying."""
    from causalneg.generation.backends import factory
    from causalneg.stages import generate

    backend = SigtermMidGenerate()
    monkeypatch.setattr(factory, "build_backend", lambda cfg: backend)
    reached: list[int] = []

    def default_action(signum: int, frame: object) -> None:
        reached.append(signum)
        raise RuntimeError("SIGTERM reached the process's default action: the engine would be left running")

    cfg = compose_cfg(
        [
            "stage=generate",
            f"paths.root_dir={tmp_path}",
            f"paths.output_dir={tmp_path / 'run'}",
            "dataset=beir",
            f"dataset.path={tiny_beir}",
            "dataset.name=tiny",
            "generation=naive",
            "generation/model=hf",
            "generation.model.path=sigterm-llm",
            "generation.progress=false",
            "generation.filters.max_positive_similarity=null",
            "logger.tracking_uri=null",
        ]
    )
    previous = signal.signal(signal.SIGTERM, default_action)
    try:
        with pytest.raises(SystemExit) as stopped:
            generate.run(cfg)
        assert stopped.value.code == 128 + signal.SIGTERM and not reached
        assert backend.closed
        assert signal.getsignal(signal.SIGTERM) is default_action  # the stage's handler is gone again
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_vllm_close_stops_engine_processes_that_outlive_shutdown() -> None:
    """The last resort of VLLMBackend.close(): an engine process still alive after vLLM's own shutdown (here a
    child whose ``shutdown`` does nothing and that ignores SIGTERM) is terminated, then killed."""
    import multiprocessing
    from types import SimpleNamespace

    from causalneg.generation.backends.vllm_backend import VLLMBackend

    shutdowns: list[bool] = []
    context = multiprocessing.get_context("fork")
    before = set(multiprocessing.active_children())
    ready = context.Event()
    engine = context.Process(target=_stubborn_engine, args=(ready,), daemon=True)
    engine.start()
    assert ready.wait(30)
    backend = VLLMBackend.__new__(VLLMBackend)  # no vllm: the engine is a stand-in
    core = SimpleNamespace(shutdown=lambda: shutdowns.append(True))
    backend.llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))
    backend._outlines_generators = {}
    backend._engine_processes = [p for p in multiprocessing.active_children() if p not in before]
    assert backend._engine_processes == [engine]
    try:
        backend.close()
        assert shutdowns == [True] and not engine.is_alive() and backend.llm is None
        assert engine.exitcode == -signal.SIGKILL  # it ignored SIGTERM: killed after the grace period
        backend.close()  # idempotent
    finally:
        if engine.is_alive():
            engine.kill()


def _stubborn_engine(ready: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(120)
