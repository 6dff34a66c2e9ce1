"""stage=evaluate: rank a split's queries against the full corpus with an encoder; nDCG@10, Recall, MRR.

The encoder is ``model=`` (a preset, or ``model=hf model.name_or_path=<exported folder>`` for a trained one).
Writes ``metrics.json`` and ``per_query.json`` to the run folder and logs them to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from causalneg.artifacts import atomic_write_json
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.retrieval import evaluate_retrieval
from causalneg.stages.common import apply_runtime, build_encoder, load_dataset
from causalneg.tracking.runs import build_mlflow_logger, log_json, log_metrics, terminal_status


def run(cfg: DictConfig) -> dict[str, Any]:
    apply_runtime(cfg)
    split = str(cfg.eval.get("split") or cfg.dataset.test_split)
    output_dir = Path(str(cfg.paths.output_dir))
    logger = build_mlflow_logger(cfg)
    with terminal_status(logger):
        dataset = load_dataset(cfg)
        encoder = build_encoder(cfg)
        cache = (
            EmbeddingCache(Path(str(cfg.paths.cache_dir)) / "embeddings")
            if cfg.eval.cache_embeddings
            else None
        )
        result = evaluate_retrieval(
            encoder,
            dataset,
            split,
            k=int(cfg.eval.k),
            batch_size=int(cfg.eval.batch_size),
            precision=str(cfg.eval.precision),
            cache=cache,
        )
        atomic_write_json(output_dir / "metrics.json", result.metrics)
        atomic_write_json(output_dir / "per_query.json", result.per_query)
        log_metrics(logger, {f"{split}/{k}": v for k, v in result.metrics.items()})
        log_json(logger, result.per_query, f"metrics/{split}_per_query.json")
    print(f"\n[causalneg] {cfg.model.get('name', 'encoder')} on {dataset.name}/{split}:")
    for name, value in sorted(result.metrics.items()):
        print(f"  {name:>11}: {value:.4f}")
    return {"metrics": result.metrics, "objective": result.metrics.get("ndcg@10"), "run_id": logger.run_id}
