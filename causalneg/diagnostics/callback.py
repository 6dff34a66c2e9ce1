"""Lightning callback that measures the source shortcut during training and logs it to MLflow.

At each selected validation run (and once before the first training step) it embeds a fixed held-out
sample of training groups with the current encoder, computes
:func:`~causalneg.diagnostics.shortcut.shortcut_diagnostics`, and logs every metric as ``diag/<key>``
plus its own wall time as ``diag/seconds``. Files go to the ``diagnostics/`` artifact folder of the MLflow
run (and to ``plot_dir`` if given): per-source histograms at the start (``source_histograms_start.png``)
and end of training (``source_histograms_end.png``), the MI curve over steps (``mi_curve.png``) and the
raw history (``diagnostics_history.json``).

Contract with the rest of the system:
- ``trainer.datamodule.diagnostics_dataloader()`` yields dict batches like training batches, including
  ``"neg_source"`` [B, K] long (NegativeSource values) and ``"neg_mask"`` [B, K] bool; it should iterate the
  same seeded sample every time so that values are comparable across steps.
- ``pl_module.embed_batch(batch)`` returns ``{"query": [B, D], "positive": [B, D], "negatives": [B, K, D]}``.
Every rank embeds the groups (the same loader on each, so sharded models work); only global rank zero computes,
logs and writes. ``embed_batch`` must call the encoder directly, not through the DDP wrapper.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_warn

from causalneg.contracts import TAU_ENT
from causalneg.diagnostics.plots import mi_curve, save_figure, source_histograms
from causalneg.diagnostics.shortcut import ShortcutReport, shortcut_diagnostics
from causalneg.errors import ConfigError

ARTIFACT_DIR = "diagnostics"


def _pad_cat(parts: list[torch.Tensor], fill: Any) -> torch.Tensor:
    """Concatenate [B_i, K_i, ...] tensors along dim 0, padding dim 1 to max K_i with ``fill``."""
    k_max = max(t.shape[1] for t in parts)
    padded = []
    for t in parts:
        if t.shape[1] < k_max:
            pad = t.new_full((t.shape[0], k_max - t.shape[1], *t.shape[2:]), fill)
            t = torch.cat([t, pad], dim=1)
        padded.append(t)
    return torch.cat(padded, dim=0)


@torch.no_grad()
def collect_embeddings(
    datamodule: Any, pl_module: pl.LightningModule, max_groups: int
) -> dict[str, torch.Tensor] | None:
    """Embed up to ``max_groups`` groups from ``datamodule.diagnostics_dataloader()`` (CPU tensors out).

    Returns:
        ``q`` [G, D], ``p`` [G, D], ``n`` [G, K, D], ``neg_source`` [G, K], ``neg_mask`` [G, K] -- the keyword
        arguments of :func:`shortcut_diagnostics` (batches with different K are padded, mask False); None when
        the datamodule holds no diagnostic groups (its loader is None or empty).
    """
    make_loader = getattr(datamodule, "diagnostics_dataloader", None)
    embed: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = getattr(
        pl_module, "embed_batch", None
    )
    if make_loader is None or embed is None:
        raise ConfigError(
            "diagnostics: ShortcutDiagnostics needs trainer.datamodule.diagnostics_dataloader() and "
            "pl_module.embed_batch(batch); set diagnostics=null to train without it"
        )
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("q", "p", "n", "neg_source", "neg_mask")}
    total = 0
    loader = make_loader()
    for batch in loader if loader is not None else ():
        out = embed(move_data_to_device(batch, pl_module.device))
        take = min(max_groups - total, out["query"].shape[0])
        for key, value in (
            ("q", out["query"]),
            ("p", out["positive"]),
            ("n", out["negatives"]),
            ("neg_source", batch["neg_source"]),
            ("neg_mask", batch["neg_mask"]),
        ):
            parts[key].append(
                value[:take].detach().float().cpu() if value.is_floating_point() else value[:take].cpu()
            )
        total += take
        if total >= max_groups:
            break
    if total == 0:
        return None
    return {
        "q": torch.cat(parts["q"]),
        "p": torch.cat(parts["p"]),
        "n": _pad_cat(parts["n"], 0.0),
        "neg_source": _pad_cat(parts["neg_source"], 0),
        "neg_mask": _pad_cat(parts["neg_mask"], False),
    }


class ShortcutDiagnostics(Callback):
    """Compute and log the shortcut diagnostics every ``every_n_validations`` validation runs.

    Args:
        every_n_validations: run at validations 1, 1 + n, 1 + 2n, ... (sanity checks excluded).
        n_permutations: shuffles per permutation baseline.
        seed: seeds the estimators' jitter, the permutations and the probe folds (the same every time).
        temperature_ent: τ_ent of ``gen_mass`` / ``h_gen_norm``; default :data:`causalneg.contracts.TAU_ENT`,
            the regularizer's default (keep them equal, or gen_mass is not the regularizer's).
        max_groups: at most this many held-out groups are embedded.
        at_train_start: also measure once before the first training step (the untrained encoder's baseline;
            logged at the current global step and drawn as the "start" histograms).
        plot_dir: if set, PNGs and the history are also written there (e.g. when no MLflow logger is used).
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        n_permutations: int = 20,
        seed: int = 0,
        temperature_ent: float = TAU_ENT,
        max_groups: int = 256,
        at_train_start: bool = True,
        plot_dir: str | None = None,
    ) -> None:
        if every_n_validations < 1 or n_permutations < 1 or max_groups < 1 or temperature_ent <= 0:
            raise ConfigError(
                "diagnostics: every_n_validations, n_permutations and max_groups must be >= 1 and "
                f"temperature_ent > 0; got {every_n_validations=}, {n_permutations=}, {max_groups=}, "
                f"{temperature_ent=}"
            )
        self.every_n_validations = every_n_validations
        self.n_permutations = n_permutations
        self.seed = seed
        self.temperature_ent = temperature_ent
        self.max_groups = max_groups
        self.at_train_start = at_train_start
        self.plot_dir = plot_dir
        self.history: list[tuple[int, dict[str, float]]] = []
        self._validations = 0
        self._wrote_start = False
        self._measured_start = False
        self._warned_empty = False
        self._last_report: ShortcutReport | None = None

    def measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[ShortcutReport, float] | None:
        """Embed the held-out groups, compute the report, record it in ``history``; returns (report, seconds).

        Every rank embeds (a sharded model, FSDP or ZeRO-3, needs all ranks in its forward); only global rank
        zero computes the statistics. None on other ranks, and (with a one-time warning) when the datamodule
        has no diagnostic groups.
        """
        start = time.perf_counter()
        arrays = collect_embeddings(getattr(trainer, "datamodule", None), pl_module, self.max_groups)
        if not trainer.is_global_zero:
            return None
        if arrays is None:
            if not self._warned_empty:
                rank_zero_warn(
                    "ShortcutDiagnostics: the datamodule has no held-out diagnostic groups; nothing logged"
                )
                self._warned_empty = True
            return None
        report = shortcut_diagnostics(
            **arrays, temperature_ent=self.temperature_ent, n_permutations=self.n_permutations, seed=self.seed
        )
        self.history.append((int(trainer.global_step), dict(report.metrics)))
        self._last_report = report
        return report, time.perf_counter() - start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.at_train_start or self._measured_start:
            return  # already measured when resuming from a checkpoint
        self._measured_start = True
        was_training = pl_module.training
        pl_module.eval()
        try:
            measured = self.measure(trainer, pl_module)
        finally:
            pl_module.train(was_training)
        if measured is None:
            return
        report, seconds = measured
        metrics = {f"diag/{k}": v for k, v in report.metrics.items()} | {"diag/seconds": seconds}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._write(trainer, {"source_histograms_start.png": self._histograms(report, trainer, "start")})

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        start = time.perf_counter()
        measured = self.measure(trainer, pl_module)
        if measured is None:
            return
        report = measured[0]
        if not self._wrote_start:
            self._write(trainer, {"source_histograms_start.png": self._histograms(report, trainer, "start")})
        for key, value in report.metrics.items():
            pl_module.log(f"diag/{key}", value, sync_dist=False, rank_zero_only=True)
        pl_module.log("diag/seconds", time.perf_counter() - start, sync_dist=False, rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self._last_report is None:
            return
        history = json.dumps([{"step": step, "metrics": m} for step, m in self.history], indent=1)
        self._write(
            trainer,
            {
                "source_histograms_end.png": self._histograms(self._last_report, trainer, "end"),
                "mi_curve.png": mi_curve(self.history),
                "diagnostics_history.json": history,
            },
        )

    def _histograms(self, report: ShortcutReport, trainer: pl.Trainer, when: str) -> Any:
        if when == "start":
            self._wrote_start = True
        return source_histograms(report, title=f"{when} of training, step {trainer.global_step}")

    def _write(self, trainer: pl.Trainer, files: dict[str, Any]) -> None:
        """Save figures (PNG) and strings to MLflow's ``diagnostics/`` folder and to ``plot_dir``."""
        with tempfile.TemporaryDirectory(prefix="causalneg-diag-") as tmp:
            paths = []
            for name, content in files.items():
                path = Path(tmp) / name
                if isinstance(content, str):
                    path.write_text(content, encoding="utf-8")
                else:
                    save_figure(content, path)
                paths.append(path)
                if self.plot_dir is not None:
                    target = Path(self.plot_dir) / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(path.read_bytes())
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
                    for path in paths:
                        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=ARTIFACT_DIR)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "validations": self._validations,
            "wrote_start": self._wrote_start,
            "measured_start": self._measured_start,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(step), dict(m)) for step, m in state_dict.get("history", [])]
        self._validations = int(state_dict.get("validations", 0))
        self._wrote_start = bool(state_dict.get("wrote_start", False))
        self._measured_start = bool(state_dict.get("measured_start", False))
