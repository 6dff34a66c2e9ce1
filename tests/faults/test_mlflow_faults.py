"""MLflow under faults: a failed or interrupted run is closed FAILED/KILLED (never left RUNNING), a run a
SIGKILL left RUNNING is closed KILLED by the next start in the same folder, and a tracking server that is down
or silent is a clear error at start-up, not a hang.

Interruptions during Lightning's fit (SIGKILL, SIGTERM, resume of the same run) are exercised on a real
training child process in test_training_resume.py; here the train stage runs in-process and a fault is
injected before training so each case takes seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from causalneg.errors import ConfigError, DataError
from causalneg.stages import dispatch
from causalneg.stages.specs import run_spec
from causalneg.stages.train import RUN_FILE
from causalneg.tracking.runs import build_mlflow_logger
from tests.conftest import tiny_overrides
from tests.faults import all_runs

pytestmark = pytest.mark.integration


def break_queries(beir: Path) -> None:
    with open(beir / "queries.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"_id": "q-broken"\n')


def test_failed_run_is_marked_failed(tmp_path: Path, tiny_beir: Path, compose_cfg, seed_mlflow) -> None:
    seed_mlflow(tmp_path)
    break_queries(tiny_beir)
    with pytest.raises(DataError, match=r"queries\.jsonl:65"):
        dispatch(compose_cfg(tiny_overrides(tmp_path, tiny_beir)))
    assert [r.info.status for r in all_runs(tmp_path)] == ["FAILED"]


def raise_keyboard_interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def send_sigterm(*args: object, **kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)  # the handler interrupts this at once
    raise AssertionError("SIGTERM did not interrupt the stage")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [(raise_keyboard_interrupt, KeyboardInterrupt), (send_sigterm, SystemExit)],
    ids=["ctrl_c", "sigterm"],
)
def test_interrupted_run_is_marked_killed(
    fault: Callable[..., None],
    expected: type[BaseException],
    tmp_path: Path,
    tiny_beir: Path,
    compose_cfg,
    seed_mlflow,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_mlflow(tmp_path)
    monkeypatch.setattr("causalneg.stages.train.build_encoder", fault)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(expected) as info:
        dispatch(compose_cfg(tiny_overrides(tmp_path, tiny_beir)))
    if expected is SystemExit:
        assert info.value.code == 128 + signal.SIGTERM  # the shell convention for "killed by SIGTERM"
    assert [r.info.status for r in all_runs(tmp_path)] == ["KILLED"]
    assert signal.getsignal(signal.SIGTERM) is before  # the stage restored the handler it replaced


def test_run_left_running_by_sigkill_is_marked_killed_on_next_start(
    tmp_path: Path, tiny_beir: Path, compose_cfg, seed_mlflow
) -> None:
    """A SIGKILL leaves the run RUNNING (no code runs); the next start in the same output folder closes it.

    Here the next start has no checkpoint to resume from, so it starts a new run (with a checkpoint it would
    continue the same run: test_training_resume.py)."""
    seed_mlflow(tmp_path)
    cfg = compose_cfg(tiny_overrides(tmp_path, tiny_beir))
    output_dir = Path(cfg.paths.output_dir)
    orphan = build_mlflow_logger(
        run_spec(cfg), run_file=output_dir / RUN_FILE
    ).run_id  # then "killed": never closed
    assert [r.info.status for r in all_runs(tmp_path)] == ["RUNNING"]

    break_queries(tiny_beir)  # the restart fails early too, so the test stays fast
    with pytest.raises(DataError):
        dispatch(cfg)
    old, new = all_runs(tmp_path)
    assert old.info.run_id == orphan and old.info.status == "KILLED"
    assert "marked KILLED by the next start" in old.data.tags["killed_note"]
    assert new.info.status == "FAILED"
    assert new.info.run_id in (output_dir / RUN_FILE).read_text()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on exit: connections are refused


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(("server", "limit_s"), [("closed_port", 5.0), ("silent_server", 20.0)])
def test_tracking_server_down_is_a_clear_error_at_start_up(
    server: str, limit_s: float, tmp_path: Path, tiny_beir: Path, compose_cfg, request: pytest.FixtureRequest
) -> None:
    port = request.getfixturevalue(server)
    uri = f"http://127.0.0.1:{port}"
    cfg = compose_cfg([*tiny_overrides(tmp_path, tiny_beir), f"logger.tracking_uri={uri}"])
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        dispatch(cfg)
    assert time.monotonic() - started < limit_s  # refused: at once; silent: the 5 s health-check timeout
    assert f"MLflow tracking server at logger.tracking_uri={uri} is not reachable" in str(info.value)
    # Nothing was loaded or written: no model cache, no artifacts, no run folder.
    assert {p.name for p in tmp_path.iterdir()} == {"tiny_beir"}
