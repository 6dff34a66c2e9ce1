"""ShortcutDiagnostics in a tiny Lightning fit: metrics and PNG artifacts land in a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader

from causalneg.diagnostics.callback import ShortcutDiagnostics
from causalneg.records import NegativeSource

pytestmark = pytest.mark.integration
D_IN, K, N_GEN = 8, 6, 2


def make_groups(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Groups whose generated negatives (last N_GEN slots) share a style offset; slot 0 is padding."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, D_IN, generator=g)
    negatives = q[:, None] * 0.3 + torch.randn(n, K, D_IN, generator=g)
    negatives[:, K - N_GEN :, 0] += 4.0
    source = torch.full((n, K), int(NegativeSource.MINED), dtype=torch.long)
    source[:, K - N_GEN :] = int(NegativeSource.GENERATED)
    mask = torch.ones(n, K, dtype=torch.bool)
    mask[:, 0] = False
    positive = q + 0.3 * torch.randn(n, D_IN, generator=g)
    return [
        {"q": q[i], "p": positive[i], "n": negatives[i], "neg_source": source[i], "neg_mask": mask[i]}
        for i in range(n)
    ]


class TinySystem(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(D_IN, 8)

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        def enc(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.encoder(x), dim=-1)

        return {"query": enc(batch["q"]), "positive": enc(batch["p"]), "negatives": enc(batch["n"])}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        e = self.embed_batch(batch)
        pos = (e["query"] * e["positive"]).sum(-1, keepdim=True)
        neg = torch.einsum("bd,bkd->bk", e["query"], e["negatives"]).masked_fill(~batch["neg_mask"], -1e4)
        logits = torch.cat([pos, neg], dim=1) / 0.05
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.training_step(batch, batch_idx), batch_size=len(batch["q"]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TinyData(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train, self.held_out = make_groups(32, seed=0), make_groups(40, seed=1)
        self.diagnostics_calls = 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=8, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.train[:8], batch_size=8)

    def diagnostics_dataloader(self) -> DataLoader:
        self.diagnostics_calls += 1
        return DataLoader(self.held_out, batch_size=16)


def trainer(tmp_path: Path, epochs: int, callback: ShortcutDiagnostics, logger: Any) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        logger=logger,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )


def test_callback_logs_metrics_and_artifacts_to_mlflow(tmp_path: Path) -> None:
    torch.manual_seed(0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLFlowLogger(
        experiment_name="diag", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts")
    )
    callback = ShortcutDiagnostics(n_permutations=3, max_groups=32)
    data = TinyData()
    trainer(tmp_path, 2, callback, logger).fit(TinySystem(), datamodule=data)

    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(logger.run_id, "diag/mi_knn")
    # step 0 (before training) + one per validation (Lightning logs those at global_step - 1); no sanity check
    assert sorted(m.step for m in history) == [0, 1, 3]
    assert data.diagnostics_calls == 3
    run = client.get_run(logger.run_id)
    for key in (
        "diag/probe_auc_blind",
        "diag/mi_perm_p95",
        "diag/gen_mass",
        "diag/h_gen_norm",
        "diag/seconds",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["diag/n_groups"] == 32  # max_groups caps the 40 held-out groups
    assert run.data.metrics["diag/n_mined"] == 32 * (K - N_GEN - 1)  # the padded slot is not counted
    assert run.data.metrics["diag/probe_auc_blind"] > 0.8  # the style offset is linearly visible
    names = {Path(a.path).name for a in client.list_artifacts(logger.run_id, "diagnostics")}
    expected = {"source_histograms_start.png", "source_histograms_end.png", "mi_curve.png"}
    assert expected | {"diagnostics_history.json"} <= names
    local = Path(
        client.download_artifacts(logger.run_id, "diagnostics/diagnostics_history.json", str(tmp_path))
    )
    steps = [row["step"] for row in json.loads(local.read_text())]
    assert steps == [0, 2, 4]


def test_every_n_validations_and_plot_dir_without_mlflow(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    callback = ShortcutDiagnostics(
        every_n_validations=2, n_permutations=2, at_train_start=False, plot_dir=str(plots)
    )
    trainer(tmp_path, 3, callback, logger=False).fit(TinySystem(), datamodule=TinyData())
    assert [step for step, _ in callback.history] == [2, 6]  # validations 1 and 3 of 3
    for name in ("source_histograms_start.png", "source_histograms_end.png", "mi_curve.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"
    restored = ShortcutDiagnostics()
    restored.load_state_dict(callback.state_dict())
    assert restored.history == callback.history
