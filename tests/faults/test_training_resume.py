"""Training killed mid-epoch and restarted with the same command ends where an uninterrupted run ends.

One child process trains uninterrupted (the reference). The same command, with a checkpoint every 2 steps
(``++checkpoint.every_n_train_steps=2``) and a throttle that only sleeps, is SIGKILLed right after its first
(mid-epoch) checkpoint, restarted, SIGTERMed after a later checkpoint, and restarted once more to the end.

Expected: the resumed run continues from ``<output_dir>/checkpoints/last.ckpt`` (the training loader skips the
batches already trained on; the global RNG state, i.e. dropout, is restored), so its exported weights and its
test metrics equal the reference's. Tolerance: weights within 1e-6 absolute, metrics within 1e-9; on CPU with
one thread the computation is the same sequence of operations, so both are exact in practice. MLflow: the
three processes log into one run (its id kept in ``<output_dir>/mlflow_run.json``), which reads RUNNING after
the SIGKILL (nothing can run on SIGKILL), KILLED after the SIGTERM, and FINISHED at the end, tagged
``resumed=2``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.faults import all_runs, start_cli, wait_for

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 4  # 40 training queries - 4 held out for diagnostics = 36 groups, batches of 8, drop_last
EPOCHS = 2


class Throttle(Callback):
    """Sleeps after every training batch (changes no number): gives a test time to kill between checkpoints."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        time.sleep(self.seconds)


def train_args(root: Path, beir: Path, throttled: bool) -> list[str]:
    """The user's command line: tiny data and encoder, fixed run folder so a restart finds its checkpoint."""
    args = [a for a in tiny_overrides(root, beir) if not a.startswith("paths.output_dir")]
    args += [
        f"hydra.run.dir={root / 'out'}",
        f"trainer.max_epochs={EPOCHS}",
        "optim.optimizer.lr=3e-3",
        "diagnostics.enabled=false",
        "++checkpoint.every_n_train_steps=2",
    ]
    if throttled:
        args += [f"+callbacks.throttle._target_={__name__}.Throttle", "+callbacks.throttle.seconds=0.7"]
    return args


def checkpoint_state(path: Path) -> tuple[int, int]:
    """(global step, epoch) of a Lightning checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return int(ckpt["global_step"]), int(ckpt["epoch"])


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.rglob("*.safetensors")):
        tensors.update({f"{file.relative_to(model_dir)}:{k}": v for k, v in load_file(file).items()})
    assert tensors, f"no exported weights under {model_dir}"
    return tensors


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-4000:]


def test_killed_training_resumes_to_the_same_result(tmp_path: Path, tiny_beir: Path, seed_mlflow) -> None:
    reference, resumed = seed_mlflow(tmp_path / "reference"), seed_mlflow(tmp_path / "resumed")
    ref = start_cli(train_args(reference, tiny_beir, throttled=False), tmp_path / "reference.log")
    command = train_args(resumed, tiny_beir, throttled=True)
    last = resumed / "out" / "checkpoints" / "last.ckpt"
    run_file = resumed / "out" / "mlflow_run.json"
    proc = ref
    try:
        # 1. SIGKILL right after the first checkpoint (step 2 of 4 in epoch 0).
        log = tmp_path / "attempt1.log"
        proc = start_cli(command, log)
        wait_for(last.is_file, proc, log, timeout=400, what="the first checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        step, epoch = checkpoint_state(last)
        assert (step, epoch) == (2, 0), "the kill should land mid-epoch, after the first step checkpoint"
        run_id = json.loads(run_file.read_text())["run_id"]
        assert [(r.info.run_id, r.info.status) for r in all_runs(resumed)] == [(run_id, "RUNNING")]

        # 2. The same command resumes; SIGTERM after its next checkpoint.
        log = tmp_path / "attempt2.log"
        proc = start_cli(command, log)
        wait_for(lambda: checkpoint_state(last)[0] > step, proc, log, timeout=400, what="a later checkpoint")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-4000:]
        assert "Restoring states from the checkpoint path" in log.read_text()
        assert [(r.info.run_id, r.info.status) for r in all_runs(resumed)] == [(run_id, "KILLED")]

        # 3. The same command again, to the end.
        log = tmp_path / "attempt3.log"
        finish(start_cli(command, log), log, timeout=600)
        finish(ref, tmp_path / "reference.log", timeout=600)
    finally:
        for child in (ref, proc):
            if child.poll() is None:
                child.kill()
                child.wait()

    assert checkpoint_state(last)[0] == EPOCHS * STEPS_PER_EPOCH
    expected, got = weights(reference / "out" / "model"), weights(resumed / "out" / "model")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)

    (ref_run,), (run,) = all_runs(reference), all_runs(resumed)
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and run.data.tags["resumed"] == "2"
    assert ref_run.info.status == "FINISHED"
    finals = {k: v for k, v in ref_run.data.metrics.items() if k.startswith(("test/", "val/"))}
    assert finals and len([k for k in finals if k.startswith("test/")]) == 4
    for name, value in finals.items():
        assert run.data.metrics[name] == pytest.approx(value, abs=1e-9), name
