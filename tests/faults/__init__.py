"""Fault suite (issue #6): bad input, server faults, kills and restarts lose nothing and explain themselves.

Helpers shared by the modules: running ``python run.py`` as a user would (a child process with the
environment the tests use) and reading MLflow runs. Fixtures are in conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
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
    with open(log, "wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cli(args), cwd=REPO_ROOT, env=child_env(), stdout=handle, stderr=subprocess.STDOUT
        )


def tracking_uri(root: Path) -> str:
    """The default MLflow store of ``paths.root_dir=<root>``."""
    return f"sqlite:///{root}/mlruns/mlflow.db"


def all_runs(root: Path) -> list[Any]:
    """Every MLflow run in the store of ``paths.root_dir=<root>``, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(root))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time ASC"]) if experiments else []
