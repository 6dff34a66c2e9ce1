"""OpenAIBackend: error paths against an in-process stub HTTP server; the happy path against vLLM's own server.

The stub decides each response from the last user message (``"<behaviour>:<id>"``) and the number of times
it has seen that message, so every test states its fault script in its inputs: ``ok``, ``500x2`` (two HTTP
500s, then success), ``always500``, ``slow1`` (the first attempt sleeps past the client timeout), ``slow``
(every attempt does), ``close1`` (the first response is cut off after a few bytes of a declared longer body),
``400``, ``429x1`` (429 with Retry-After), ``garbage1`` (first a 200 whose body is not JSON).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from causalneg.errors import ConfigError
from causalneg.generation.backends.base import GenerationRequest, SamplingConfig
from causalneg.generation.backends.openai_backend import OpenAIBackend, backoff_delay
from causalneg.generation.schemas import naive_schema
from tests.conftest import send_truncated_response
from tests.integration.vllm_support import openai_server, prepare_smollm2, require_vllm

pytestmark = pytest.mark.integration

SLOW_S = 1.5  # how long the stub stalls; the client timeout in tests is 0.3 s


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(max_length=20)


class _Stub(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: Counter[str] = Counter()
        self.bodies: list[dict[str, object]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Stub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        return

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the stub answered

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        message = body["messages"][-1]["content"]
        behaviour, _, ident = message.partition(":")
        with self.server.lock:
            self.server.seen[message] += 1
            self.server.bodies.append(body)
            attempt = self.server.seen[message]
        if (behaviour == "500x2" and attempt <= 2) or behaviour == "always500":
            return self._send(500, b'{"error": "boom"}')
        if behaviour == "429x1" and attempt == 1:
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0.2"})
        if behaviour == "400":
            return self._send(400, b'{"error": "bad request"}')
        if (behaviour == "slow1" and attempt == 1) or behaviour == "slow":
            time.sleep(SLOW_S)
        if behaviour == "close1" and attempt == 1:
            send_truncated_response(self)
            return None
        if behaviour == "garbage1" and attempt == 1:
            return self._send(200, b"<html>proxy error</html>")
        time.sleep(0.01 * (hash(ident) % 5))  # finish out of order
        content = json.dumps({"label": f"{behaviour}-{ident}"})
        completion = {
            "id": "x",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
        return self._send(200, json.dumps(completion).encode())


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _backend(server: _Stub, **options: object) -> OpenAIBackend:
    defaults: dict[str, object] = {
        "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "timeout_s": 0.3,
        "connect_timeout_s": 0.3,
        "max_retries": 3,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.1,
        "concurrency": 4,
    }
    return OpenAIBackend("stub-model", **{**defaults, **options})


def _requests(*contents: str) -> list[GenerationRequest]:
    return [
        GenerationRequest(key=f"k{i}", messages=[{"role": "user", "content": c}], seed=i)
        for i, c in enumerate(contents)
    ]


SAMPLING = SamplingConfig(max_new_tokens=32, temperature=0.0, top_p=1.0)


def test_successes_in_order_and_request_body(stub: _Stub) -> None:
    backend = _backend(stub)
    contents = [f"ok:{i}" for i in range(12)]
    outputs = backend.generate(_requests(*contents), Answer, SAMPLING)
    backend.close()
    assert [o.key for o in outputs] == [f"k{i}" for i in range(12)]
    assert [Answer.model_validate_json(o.text).label for o in outputs] == [f"ok-{i}" for i in range(12)]
    assert all(o.error is None and o.output_tokens == 7 and o.finish_reason == "stop" for o in outputs)
    body = stub.bodies[0]
    assert body["model"] == "stub-model" and body["max_completion_tokens"] == 32 and "seed" in body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": Answer.model_json_schema(), "strict": True},
    }
    assert backend.stats == Counter({"requests": 12, "attempts": 12})


def test_vllm_structured_outputs_field(stub: _Stub) -> None:
    backend = _backend(stub, structured_output="vllm", send_seed=False, extra_body={"top_k": 5})
    backend.generate(_requests("ok:a"), Answer, SAMPLING)
    backend.close()
    body = stub.bodies[0]
    assert body["structured_outputs"] == {"json": Answer.model_json_schema()}
    assert "response_format" not in body and "seed" not in body and body["top_k"] == 5


def test_retries_then_success_and_final_failures_per_request(stub: _Stub) -> None:
    backend = _backend(stub)
    contents = ["500x2:a", "ok:b", "always500:c", "slow1:d", "close1:e", "429x1:f", "garbage1:g", "400:h"]
    start = time.monotonic()
    outputs = backend.generate(_requests(*contents), Answer, SAMPLING)
    elapsed = time.monotonic() - start
    backend.close()
    by_key = {o.key: o for o in outputs}
    assert [o.key for o in outputs] == [f"k{i}" for i in range(8)]
    for key, behaviour in [("k0", "500x2-a"), ("k1", "ok-b"), ("k3", "slow1-d"), ("k4", "close1-e"),
                           ("k5", "429x1-f"), ("k6", "garbage1-g")]:  # fmt: skip
        assert by_key[key].error is None, by_key[key].error
        assert Answer.model_validate_json(by_key[key].text).label == behaviour
    assert by_key["k2"].error is not None and "failed after 4 attempts" in by_key["k2"].error
    assert "HTTP 500" in by_key["k2"].error and by_key["k2"].text == ""
    assert by_key["k7"].error is not None and "HTTP 400" in by_key["k7"].error
    seen = stub.seen
    assert seen["500x2:a"] == 3 and seen["always500:c"] == 4 and seen["400:h"] == 1 and seen["ok:b"] == 1
    assert seen["slow1:d"] == 2 and seen["close1:e"] == 2 and seen["429x1:f"] == 2 and seen["garbage1:g"] == 2
    # 1 + 2 + 0 + 3 + 1 + 1 + 1 + 1 + 0 retries; 4 requests wait concurrently, so the bound is per worker:
    # always500 sleeps at most 3 * 0.1 s, 429 honours Retry-After capped at 0.1 s, slow1 waits 0.3 s timeout.
    assert backend.stats["retries"] == 9 and backend.stats["failures"] == 2
    assert elapsed < 3.0, elapsed


def test_timeouts_exhaust_retries_with_bounded_backoff(stub: _Stub) -> None:
    backend = _backend(stub, max_retries=2, backoff_base_s=0.1, backoff_max_s=0.2)
    start = time.monotonic()
    outputs = backend.generate(_requests("slow:a", "slow1:b"), Answer, SAMPLING)
    elapsed = time.monotonic() - start
    backend.close()
    assert outputs[0].error is not None and "timeout" in outputs[0].error
    assert "failed after 3 attempts" in outputs[0].error
    assert outputs[1].error is None and Answer.model_validate_json(outputs[1].text).label == "slow1-b"
    assert stub.seen["slow:a"] == 3 and stub.seen["slow1:b"] == 2
    # 3 timeouts of 0.3 s plus delays in [0.05, 0.1] and [0.1, 0.2]: between 1.05 and about 1.2 s
    assert 1.05 <= elapsed < 2.5, elapsed


def test_server_down_records_connection_errors(stub: _Stub) -> None:
    port = stub.server_address[1]
    stub.shutdown()
    stub.server_close()
    down = OpenAIBackend(
        "m", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=0.3, connect_timeout_s=0.2,
        max_retries=2, backoff_base_s=0.1, backoff_max_s=0.2,
    )  # fmt: skip
    start = time.monotonic()
    outputs = down.generate(_requests("ok:a", "ok:b"), Answer, SAMPLING)
    elapsed = time.monotonic() - start
    down.close()
    assert all(o.error is not None and "connection error" in o.error for o in outputs)
    assert all("failed after 3 attempts" in (o.error or "") for o in outputs)
    assert down.stats["attempts"] == 6 and down.stats["retries"] == 4 and down.stats["failures"] == 2
    # per request (both run concurrently): delays in [0.05, 0.1] + [0.1, 0.2]
    assert 0.15 <= elapsed < 2.0, elapsed


def test_backoff_delay_bounds() -> None:
    import random

    rng = random.Random(0)
    for attempt in range(8):
        cap = min(5.0, 0.5 * 2**attempt)
        for _ in range(50):
            delay = backoff_delay(attempt, 0.5, 5.0, rng)
            assert cap / 2 <= delay <= cap


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match="structured_output"):
        OpenAIBackend("m", structured_output="grammar")
    with pytest.raises(ConfigError, match=r"unknown generation\.backend key"):
        OpenAIBackend("m", concurency=3)
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIBackend("m", base_url="localhost:8000")


def test_yaml_lists_every_option_with_its_default() -> None:
    import dataclasses

    import yaml

    from causalneg.generation.backends.openai_backend import OpenAIOptions

    cfg = yaml.safe_load((Path(__file__).parents[2] / "conf/generation/backend/openai.yaml").read_text())
    assert cfg.pop("name") == "openai"
    assert cfg.pop("_target_") == "causalneg.generation.backends.openai_backend.OpenAIBackend"
    defaults = {f.name: f.default for f in dataclasses.fields(OpenAIOptions) if f.name != "extra_body"}
    assert cfg == {**defaults, "extra_body": {}}


def test_served_model_name_overrides_model_path(stub: _Stub) -> None:
    backend = _backend(stub, served_model_name="served")
    backend.generate(_requests("ok:a"), Answer, SAMPLING)
    backend.close()
    assert stub.bodies[0]["model"] == "served" and backend.model_id == "stub-model"


def test_empty_batch(stub: _Stub) -> None:
    backend = _backend(stub)
    assert backend.generate([], Answer, SAMPLING) == []
    backend.close()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """vLLM's OpenAI server over SmolLM2 (prepared into the session's generator cache), started once."""
    require_vllm()
    model_dir = prepare_smollm2(tmp_path_factory.getbasetemp() / "generator-cache")
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with openai_server(model_dir, log) as base_url:
        yield base_url, model_dir


@pytest.mark.vllm
@pytest.mark.parametrize("structured_output", ["json_schema", "vllm"])
def test_vllm_server_happy_path(vllm_server: tuple[str, Path], structured_output: str) -> None:
    base_url, model_dir = vllm_server
    backend = OpenAIBackend(
        str(model_dir), base_url=base_url, structured_output=structured_output, timeout_s=600
    )
    schema = naive_schema(1)
    queries = [
        "Who wrote the novel Dracula?",
        "When was the Eiffel Tower built?",
        "What is the capital of Peru?",
    ]
    requests = [
        GenerationRequest(f"q{i}", [{"role": "user", "content": f"Query: {q}\nWrite a passage that does not "
                                     "answer it, as JSON."}], seed=i)
        for i, q in enumerate(queries)
    ]  # fmt: skip
    outputs: list[Any] = backend.generate(
        requests, schema, SamplingConfig(max_new_tokens=700, temperature=0.8)
    )
    backend.close()
    assert [o.key for o in outputs] == ["q0", "q1", "q2"]
    for out in outputs:
        assert out.error is None, out.error
        assert out.finish_reason == "stop" and out.output_tokens > 0
        schema.model_validate_json(out.text)
    assert backend.stats["retries"] == 0 and backend.stats["failures"] == 0
