"""Fault suite (issue #6): bad input, server faults, kills and restarts lose nothing and explain themselves.

Helpers shared by the modules: running ``python run.py`` as a user would (a child process with the
environment the tests use), waiting for a condition while a child runs, and reading MLflow runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_PY = REPO_ROOT / "run.py"


def child_env() -> dict[str, str]:
    """The test environment for a child ``run.py``: offline, no torch.compile, one thread, unbuffered output."""
    env = dict(os.environ)
    env.update(
        TORCHDYNAMO_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HYDRA_FULL_ERROR", None)  # the user-facing error format is under test
    return env


def cli(args: Sequence[str]) -> list[str]:
    return [sys.executable, str(RUN_PY), *args]


def run_cli(args: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python run.py <args>`` to completion, from the repository root, capturing stdout and stderr."""
    return subprocess.run(
        cli(args),
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python run.py <args>`` in the background, stdout and stderr into ``log`` (no pipe to fill)."""
    handle = open(log, "wb")  # noqa: SIM115 -- closed by the child's exit; the test reads it afterwards
    return subprocess.Popen(
        cli(args), cwd=REPO_ROOT, env=child_env(), stdout=handle, stderr=subprocess.STDOUT
    )


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str
) -> None:
    """Poll ``condition`` every 50 ms until true; fail with the child's log if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"child exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.05)


def tracking_uri(root: Path) -> str:
    """The default MLflow store of ``paths.root_dir=<root>``."""
    return f"sqlite:///{root}/mlruns/mlflow.db"


def all_runs(root: Path) -> list[Any]:
    """Every MLflow run in the store of ``paths.root_dir=<root>``, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(root))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time ASC"]) if experiments else []
