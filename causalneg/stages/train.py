"""stage=train: evaluate the starting encoder, fine-tune it on training groups, evaluate and export it.

The path, top to bottom: the selection (:func:`causalneg.stages.specs.data_settings`: training and dev query ids)
-> the mined and generated artifacts (:func:`causalneg.stages.common.artifact_sources`: reused, mined, or
generated through the hand-off) -> training groups (the DataModule) -> fit -> evaluate -> export. The run logs the
fingerprints of the artifacts it consumed, so a result traces back to its exact negatives.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from causalneg.config import plain_dict
from causalneg.contracts import METRICS, PER_QUERY_METRICS, PRIMARY_METRIC, PRIMARY_MODE
from causalneg.data.datamodule import DevSet, RetrievalDataModule
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.retrieval import evaluate_retrieval
from causalneg.losses import build_objective
from causalneg.losses.objective import grad_cache_chunk_size
from causalneg.models.encoder import DualEncoder
from causalneg.models.export import export_sentence_transformers
from causalneg.records import RetrievalDataset
from causalneg.stages.common import apply_runtime, artifact_sources, build_encoder, load_dataset
from causalneg.stages.specs import data_settings, run_spec
from causalneg.tracking.runs import (
    build_mlflow_logger,
    log_artifact_fingerprints,
    log_json,
    log_metrics,
    terminal_status,
)
from causalneg.training.system import RetrieverSystem

RUN_FILE = "mlflow_run.json"  # the MLflow run of this output folder (causalneg.tracking.runs)


def evaluate_test(
    encoder: DualEncoder, dataset: RetrievalDataset, cfg: DictConfig, cache: EmbeddingCache | None
) -> Any:
    return evaluate_retrieval(
        encoder,
        dataset,
        str(cfg.dataset.test_split),
        k=int(cfg.eval.k),
        batch_size=int(cfg.eval.batch_size),
        precision=str(cfg.eval.precision),
        cache=cache,
    )


class GlobalRngState(Callback):
    """Keeps the global RNG states (torch, numpy, random: the model's own draws, e.g. dropout) in checkpoints and
    puts them back when training resumes, so a resumed run draws what an uninterrupted one would have drawn.
    Lightning does not checkpoint them; the data path uses private generators (DataModule) and needs none."""

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain Python values only: Lightning loads checkpoints with torch's weights-only unpickler.
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
        )
        return {
            "torch": torch.get_rng_state(),
            "numpy": (*numpy_state, float(gauss)),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at on_train_start: loaders and hooks run between loading and the first training step.
        self._restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restore is not None:
            name, keys, pos, has_gauss, gauss = self._restore["numpy"]
            torch.set_rng_state(self._restore["torch"])
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(self._restore["python"])
            self._restore = None


def build_callbacks(cfg: DictConfig, output_dir: Path, has_dev: bool) -> list[Callback]:
    """Configured callbacks, best/last checkpoints, optional step checkpoints, RNG state, diagnostics.

    ``last.ckpt`` is always the newest state (the version counter is off, so a stale file is overwritten,
    never sidestepped as ``last-v1.ckpt``): ``resume`` reads it. ``checkpoint.every_n_train_steps=N`` also
    writes it every N optimizer steps, so a killed run loses at most N steps instead of an epoch.
    """
    callbacks: list[Callback] = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None
    ]
    directory = output_dir / "checkpoints"
    callbacks.append(
        ModelCheckpoint(
            dirpath=directory,
            monitor=f"val/{PRIMARY_METRIC}" if has_dev else None,
            mode=PRIMARY_MODE,
            save_top_k=1,
            save_last=True,
            filename="best",
            enable_version_counter=False,
        )
    )
    every = OmegaConf.select(cfg, "checkpoint.every_n_train_steps", default=None)
    if every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=directory,
                every_n_train_steps=int(every),
                save_top_k=0,
                save_last=True,
                enable_version_counter=False,
            )
        )
    callbacks.append(GlobalRngState())
    diag = cfg.get("diagnostics")
    if diag is not None and diag.get("enabled", False) and has_dev:
        callbacks.append(instantiate(diag.callback))
    return callbacks


def build_system(
    cfg: DictConfig, encoder: DualEncoder, dev_set: Callable[[], DevSet] | None = None
) -> RetrieverSystem:
    """The LightningModule of ``cfg``: objective (``loss``, ``regularizer``), optimizer, evaluation settings, and
    the dev set it validates on (``None``: no validation)."""
    objective = build_objective(plain_dict(cfg.loss), plain_dict(cfg.get("regularizer")))
    # Guide-model masking (loss.guide_margin): a frozen copy of the stock encoder, taken before training.
    guide = copy.deepcopy(encoder) if objective.infonce.guide_margin is not None else None
    return RetrieverSystem(
        encoder,
        objective,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        eval_batch_size=int(cfg.eval.batch_size),
        eval_precision=str(cfg.eval.precision),
        grad_cache_chunk_size=grad_cache_chunk_size(plain_dict(cfg.loss)),
        guide=guide,
        dev_set=dev_set,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    apply_runtime(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(str(cfg.paths.output_dir))
    last = output_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if cfg.get("resume", True) and last.is_file() else None
    logger = build_mlflow_logger(run_spec(cfg), run_file=output_dir / RUN_FILE, resume=resume is not None)
    with terminal_status(logger):
        dataset = load_dataset(cfg)
        encoder = build_encoder(cfg)
        cache = (
            EmbeddingCache(Path(str(cfg.paths.cache_dir)) / "embeddings")
            if cfg.eval.cache_embeddings
            else None
        )
        settings = data_settings(cfg, dataset)  # the selection: training and dev query ids
        sources = artifact_sources(cfg, dataset, encoder)  # mined, then generated negatives (prepare_data)
        datamodule = RetrievalDataModule(dataset, encoder.tokenize, settings, sources)  # groups (setup)

        start = evaluate_test(encoder, dataset, cfg, cache)
        log_metrics(logger, {f"test_start/{k}": v for k, v in start.metrics.items()}, step=0)

        system = build_system(cfg, encoder, datamodule.dev_set if settings.dev_split else None)
        has_dev = bool(settings.dev_split)
        callbacks = build_callbacks(cfg, output_dir, has_dev)
        trainer: L.Trainer = instantiate(
            cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(output_dir)
        )
        system.train()  # the start-of-run evaluation left the encoder in eval mode
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
        log_artifact_fingerprints(logger, datamodule.artifact_dirs)

        best = next((c.best_model_path for c in callbacks if isinstance(c, ModelCheckpoint)), "")
        if best and Path(best).is_file():
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            system.load_state_dict(state)
        if datamodule.generated_counts:
            counts = datamodule.generated_counts  # what the CausalNeg / naive arms actually train on
            names = {
                "kept": "generated_kept",
                "queries_with_generated": "generated_queries",
                "queries": "queries",
            }
            log_metrics(logger, {f"data/{names[k]}": float(v) for k, v in counts.items()}, step=0)
        final = evaluate_test(system.encoder, dataset, cfg, cache)
        log_metrics(logger, {f"test/{k}": v for k, v in final.metrics.items()}, step=trainer.global_step)
        per_query = {name: final.per_query.get(name, {}) for name in PER_QUERY_METRICS}
        log_json(logger, per_query, "metrics/test_per_query.json")
        log_json(logger, {"start": start.metrics, "final": final.metrics}, "metrics/test.json")
        # overwrite: re-running the same command in the same folder (resume) re-exports the final model.
        export_dir = output_dir / "model"
        if trainer.is_global_zero:  # one writer (several ranks share the run folder under torchrun/SLURM)
            export_dir = export_sentence_transformers(system.encoder, export_dir, overwrite=True)

    print_summary(start.metrics, final.metrics, str(cfg.arm), export_dir)
    return {
        "test_start": start.metrics,
        "test": final.metrics,
        "objective": final.metrics[PRIMARY_METRIC],
        "run_id": logger.run_id,
        "output_dir": str(output_dir),
        "model_dir": str(export_dir),
    }


def print_summary(start: dict[str, float], final: dict[str, float], arm: str, export_dir: Path) -> None:
    print(f"\n[causalneg] arm={arm}: test metrics, starting encoder -> fine-tuned encoder")
    for name in METRICS:
        if name in start and name in final:
            delta = final[name] - start[name]
            print(f"  {name:>11}: {start[name]:.4f} -> {final[name]:.4f}  ({delta:+.4f})")
    print(f"  exported model: {export_dir}\n", flush=True)
