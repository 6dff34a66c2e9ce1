"""Training killed mid-epoch and restarted with the same command ends where an uninterrupted run ends.

One child process trains uninterrupted (the reference: 2 epochs of 4 steps). The same command, with a
checkpoint every 2 steps (``++checkpoint.every_n_train_steps=2``), is started three times in one output
folder: the first process is SIGKILLed at step 3 (its first checkpoint, at step 2 of epoch 0, exists), the
second resumes and is SIGTERMed at step 7 (mid-epoch 1, after the step-6 checkpoint), the third resumes and
finishes. The signals come from a callback in the child (:class:`SignalAt`), so they land at a known step
instead of racing a timer; to the process they are the same signals a user or a scheduler sends.

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
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.faults import all_runs, run_cli, start_cli

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 4  # 40 training queries - 4 held out for diagnostics = 36 groups, batches of 8, drop_last
EPOCHS = 2


class SignalAt(Callback):
    """Signals its own process before a training step: the n-th start of the command in an output folder
    (counted in ``<output_dir>/attempts``) sends ``plan[n] = [signal name, global step]``; later starts none."""

    def __init__(self, plan: list[list[Any]]) -> None:
        self.plan = [(str(name), int(step)) for name, step in plan]
        self.todo: tuple[str, int] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counter = Path(trainer.default_root_dir) / "attempts"
        attempt = int(counter.read_text()) if counter.is_file() else 0
        counter.write_text(str(attempt + 1))
        self.todo = self.plan[attempt] if attempt < len(self.plan) else None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.todo is not None and trainer.global_step == self.todo[1]:
            os.kill(os.getpid(), getattr(signal, self.todo[0]))
            time.sleep(30)  # SIGKILL ends the process here; SIGTERM raises SystemExit out of the sleep


def train_args(root: Path, beir: Path, faults: bool) -> list[str]:
    """The user's command line: tiny data and encoder, fixed run folder so a restart finds its checkpoint."""
    args = [a for a in tiny_overrides(root, beir) if not a.startswith("paths.output_dir")]
    args += [
        f"hydra.run.dir={root / 'out'}",
        f"trainer.max_epochs={EPOCHS}",
        "optim.optimizer.lr=3e-3",
        "diagnostics.enabled=false",
        "++checkpoint.every_n_train_steps=2",
    ]
    if faults:
        args += [
            f"+callbacks.faults._target_={__name__}.SignalAt",
            "+callbacks.faults.plan=[[SIGKILL,3],[SIGTERM,7]]",
        ]
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


def test_killed_training_resumes_to_the_same_result(tmp_path: Path, tiny_beir: Path, seed_mlflow) -> None:
    reference, resumed = seed_mlflow(tmp_path / "reference"), seed_mlflow(tmp_path / "resumed")
    ref = start_cli(train_args(reference, tiny_beir, faults=False), tmp_path / "reference.log")
    command = train_args(resumed, tiny_beir, faults=True)
    last = resumed / "out" / "checkpoints" / "last.ckpt"
    run_file = resumed / "out" / "mlflow_run.json"
    try:
        # 1. SIGKILL at step 3: the step-2 checkpoint (mid-epoch 0) is the latest state on disk.
        done = run_cli(command)
        assert done.returncode == -signal.SIGKILL, done.stdout[-3000:] + done.stderr[-3000:]
        assert checkpoint_state(last) == (2, 0)
        run_id = json.loads(run_file.read_text())["run_id"]
        assert [(r.info.run_id, r.info.status) for r in all_runs(resumed)] == [(run_id, "RUNNING")]

        # 2. The same command resumes from step 2; SIGTERM at step 7 (after the step-6 checkpoint).
        done = run_cli(command)
        assert done.returncode == 128 + signal.SIGTERM, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"Restoring states from the checkpoint path at {last}" in done.stdout + done.stderr
        assert checkpoint_state(last) == (6, 1)
        assert [(r.info.run_id, r.info.status) for r in all_runs(resumed)] == [(run_id, "KILLED")]

        # 3. The same command again, to the end.
        done = run_cli(command)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert ref.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-4000:]
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()

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
