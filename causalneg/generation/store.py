"""A resumable, content-addressed store of LLM requests: an append-only JSONL journal.

Every request has a key (:func:`request_key`): a sha256 of everything that determines its output (template
version, schema hash, model id, backend signature, sampling parameters, seed, input row id, stage, attempt and
the hash of the rendered messages). :meth:`RequestStore.run` sends only the requests whose key is not in the
journal, in chunks of ``flush_every``; after each chunk the finished outputs are appended, flushed and
``fsync``-ed under an exclusive ``flock`` (several processes may share a journal). So a crash or SIGKILL loses
at most the chunk in flight; re-running skips finished keys and never duplicates one (a key seen twice keeps
its first record). A torn last line (killed mid-write) is ignored on read and cut off before the next append.
Failed requests (``RawOutput.error``) are not journaled: a re-run tries them again.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm.auto import tqdm

from causalneg.artifacts import fingerprint
from causalneg.errors import DataError
from causalneg.generation.backends.base import GenerationBackend, GenerationRequest, RawOutput, SamplingConfig


def request_key(**parts: Any) -> str:
    """Stable hash of the request's determining parts (canonical JSON, so key order and process do not matter)."""
    return fingerprint(parts)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. base seed, row id, stage, attempt), stable across processes."""
    return int(fingerprint(list(parts))[:15], 16)


class RequestStore:
    """The journal at ``path``; ``records`` maps key -> finished record (loaded on construction)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = self._load()
        # What this process generated (not read back from the journal): requests, output tokens, seconds.
        self.fresh = {"requests": 0, "output_tokens": 0, "seconds": 0.0}

    def _load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return records
        with open(self.path, encoding="utf-8") as handle:
            lines = handle.readlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            last = number == len(lines)
            if last and not line.endswith("\n"):
                break  # torn by a kill mid-write: that request was not finished
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"corrupt journal line ({err.msg})", path=self.path, line=number) from None
            records.setdefault(record["key"], record)
        return records

    @contextmanager
    def _locked_append(self) -> Iterator[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                size = handle.seek(0, os.SEEK_END)
                if size:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":  # cut a torn tail so the next line starts cleanly
                        handle.seek(0)
                        keep = handle.read().rfind(b"\n") + 1
                        handle.truncate(keep)
                handle.seek(0, os.SEEK_END)
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append finished records durably (one write, flush, fsync); keys already present are skipped."""
        fresh = [r for r in records if r["key"] not in self.records]
        if not fresh:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh).encode("utf-8")
        with self._locked_append() as handle:
            handle.write(payload)
        for record in fresh:
            self.records[record["key"]] = record

    def run(
        self,
        requests: Sequence[GenerationRequest],
        meta: Sequence[dict[str, Any]],
        backend: GenerationBackend,
        schema: type[BaseModel],
        sampling: SamplingConfig,
        flush_every: int = 16,
        desc: str = "generate",
        progress: bool = True,
    ) -> list[RawOutput]:
        """One output per request, in order: from the journal when finished, else from ``backend``.

        ``meta[i]`` (query id, stage, attempt, ...) is stored with request ``i``'s record. Records carry
        ``seconds`` = the chunk's wall time divided by its size (backends batch, so per-request time is shared).
        """
        results: dict[str, RawOutput] = {}
        todo = [(r, m) for r, m in zip(requests, meta, strict=True) if r.key not in self.records]
        bar = tqdm(
            total=len(requests),
            initial=len(requests) - len(todo),
            desc=desc,
            unit="req",
            disable=not progress,
        )
        tokens, seconds = 0, 0.0
        try:
            for start in range(0, len(todo), max(1, flush_every)):
                chunk = todo[start : start + max(1, flush_every)]
                began = time.perf_counter()
                outputs = backend.generate([r for r, _ in chunk], schema, sampling)
                elapsed = time.perf_counter() - began
                if len(outputs) != len(chunk):
                    raise RuntimeError(
                        f"backend {backend.name} returned {len(outputs)} outputs for {len(chunk)} requests"
                    )
                finished = []
                for (request, info), output in zip(chunk, outputs, strict=True):
                    results[request.key] = output
                    if output.error is None:
                        finished.append(self._record(request, info, output, sampling, elapsed / len(chunk)))
                self.append(finished)
                tokens += sum(o.output_tokens for o in outputs)
                seconds += elapsed
                self.fresh["requests"] += len(chunk)
                self.fresh["output_tokens"] += sum(o.output_tokens for o in outputs)
                self.fresh["seconds"] += elapsed
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{tokens / max(seconds, 1e-9):.1f}")
        finally:
            bar.close()
        return [results.get(r.key) or self.output(r.key) for r in requests]

    def _record(
        self,
        request: GenerationRequest,
        info: dict[str, Any],
        output: RawOutput,
        sampling: SamplingConfig,
        seconds: float,
    ) -> dict[str, Any]:
        return {
            **info,
            "key": request.key,
            "seed": request.seed,
            "sampling": asdict(sampling),
            "text": output.text,
            "output_tokens": output.output_tokens,
            "finish_reason": output.finish_reason,
            "seconds": round(seconds, 4),
            "created": round(time.time(), 3),
        }

    def output(self, key: str) -> RawOutput:
        record = self.records[key]
        return RawOutput(key, record["text"], int(record["output_tokens"]), None, record.get("finish_reason"))
