"""stage=diagnose: the source-shortcut diagnostics (DESIGN §1c) for any encoder or checkpoint on any dataset.

    python run.py stage=diagnose +experiment=causalneg diagnose.checkpoint=<run>/checkpoints/best.ckpt

Embeds the same held-out training groups the training callback uses, computes MI(source; similarity) with its
permutation band, the source probes and the generated mass, writes ``diagnostics.json`` and histograms to the
run folder and logs them to MLflow. Without a checkpoint the ``model=`` encoder is diagnosed as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from causalneg.artifacts import atomic_write_json
from causalneg.config import plain_dict
from causalneg.data.datamodule import RetrievalDataModule
from causalneg.diagnostics.callback import collect_embeddings
from causalneg.diagnostics.plots import save_figure, source_histograms
from causalneg.diagnostics.shortcut import shortcut_diagnostics
from causalneg.errors import ConfigError
from causalneg.losses import build_objective
from causalneg.stages.common import apply_runtime, artifact_sources, build_encoder, load_dataset
from causalneg.stages.specs import data_settings, run_spec
from causalneg.tracking.runs import build_mlflow_logger, log_file, log_metrics, terminal_status
from causalneg.training.system import RetrieverSystem


def run(cfg: DictConfig) -> dict[str, Any]:
    apply_runtime(cfg)
    diag_cfg = cfg.diagnostics
    output_dir = Path(str(cfg.paths.output_dir))
    logger = build_mlflow_logger(run_spec(cfg))
    with terminal_status(logger):
        dataset = load_dataset(cfg)
        encoder = build_encoder(cfg)
        # Embedding only: the run's objective (so that its checkpoint loads as saved), no optimizer.
        objective = build_objective(plain_dict(cfg.loss), plain_dict(cfg.get("regularizer")))
        system = RetrieverSystem(encoder, objective)
        checkpoint = (cfg.get("diagnose") or {}).get("checkpoint")
        if checkpoint:
            if not Path(str(checkpoint)).is_file():
                raise ConfigError(f"diagnose.checkpoint={checkpoint} does not exist")
            state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)["state_dict"]
            system.load_state_dict(state)
        system.eval()
        datamodule = RetrievalDataModule(
            dataset, encoder.tokenize, data_settings(cfg, dataset), artifact_sources(cfg, dataset, encoder)
        )
        datamodule.prepare_data()
        datamodule.setup("fit")
        callback_cfg = diag_cfg.callback
        embeddings = collect_embeddings(datamodule, system, int(callback_cfg.max_groups))
        if embeddings is None:
            raise ConfigError(
                "diagnose: no held-out groups to measure (data.diagnostics_groups=0, or too few training queries)"
            )
        report = shortcut_diagnostics(
            **embeddings,
            temperature_ent=float(callback_cfg.temperature_ent),
            n_permutations=int(callback_cfg.n_permutations),
            seed=int(callback_cfg.seed),
        )
        atomic_write_json(
            output_dir / "diagnostics.json", {"metrics": report.metrics, "skipped": report.skipped}
        )
        figure = save_figure(
            source_histograms(report, title=f"{cfg.arm} on {dataset.name}"), output_dir / "histograms.png"
        )
        log_metrics(logger, {f"diag/{k}": v for k, v in report.metrics.items()})
        log_file(logger, output_dir / "diagnostics.json", "diagnostics")
        log_file(logger, figure, "diagnostics")
    print(f"\n[causalneg] shortcut diagnostics ({len(embeddings['q'])} held-out groups):")
    for name, value in sorted(report.metrics.items()):
        print(f"  {name:>20}: {value:.4f}")
    for reason in report.skipped:
        print(f"  skipped: {reason}")
    return {"metrics": report.metrics, "run_id": logger.run_id}
