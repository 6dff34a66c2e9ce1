"""stage=evaluate: rank a split's queries against the full corpus with an encoder; nDCG@10, Recall, MRR.

The encoder is ``model=`` (a preset, or ``model=hf model.name_or_path=<exported folder>`` for a trained one).
Writes ``metrics.json`` and ``per_query.json`` to the run folder and logs them to MLflow.

Under a multi-process trainer (``trainer=ddp trainer.devices=N``, ``trainer.num_nodes=M``) every rank encodes
its shards of the corpus (``eval.shard_size``) and searches them; the merged top-k is exact, so the metrics
equal one process's. Rank 0 writes the files and the MLflow run; each rank's encoding throughput is printed and
logged (``<split>/encode/rank<r>/passages_per_second``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from causalneg.artifacts import atomic_write_json
from causalneg.config import plain_dict
from causalneg.contracts import PRIMARY_METRIC
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.index import IndexConfig
from causalneg.evaluation.launch import launch_fabric, wants_processes
from causalneg.evaluation.retrieval import RetrievalResult, evaluate_retrieval
from causalneg.stages.common import apply_runtime, build_encoder, load_dataset
from causalneg.stages.specs import run_spec
from causalneg.tracking.runs import build_mlflow_logger, log_json, log_metrics, terminal_status


def _evaluate(cfg: DictConfig, split: str, fabric: Any) -> tuple[str, RetrievalResult]:
    dataset = load_dataset(cfg)
    encoder = build_encoder(cfg)
    if fabric is not None:
        encoder = encoder.to(fabric.device)
    cache = (
        EmbeddingCache(Path(str(cfg.paths.cache_dir)) / "embeddings") if cfg.eval.cache_embeddings else None
    )
    result = evaluate_retrieval(
        encoder,
        dataset,
        split,
        k=int(cfg.eval.k),
        batch_size=int(cfg.eval.batch_size),
        precision=str(cfg.eval.precision),
        cache=cache,
        progress=bool(cfg.eval.get("progress", False)) and fabric is None,
        shard_size=cfg.eval.get("shard_size"),
        index=IndexConfig.from_dict(plain_dict(cfg.eval.index)) if cfg.eval.get("index") else None,
        distributed=fabric is not None,
    )
    return dataset.name, result


def throughput_metrics(split: str, rank_stats: list[dict[str, Any]]) -> dict[str, float]:
    """``<split>/encode/rank<r>/{passages_per_second, passages, seconds}`` for every rank."""
    out = {}
    for stats in rank_stats:
        prefix = f"{split}/encode/rank{stats['rank']}"
        out[f"{prefix}/passages_per_second"] = float(stats["passages_per_second"])
        out[f"{prefix}/passages"] = float(stats["passages_encoded"])
        out[f"{prefix}/seconds"] = float(stats["encode_seconds"])
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    apply_runtime(cfg)
    split = str(cfg.eval.get("split") or cfg.dataset.test_split)
    fabric = launch_fabric(plain_dict(cfg.trainer)) if wants_processes(plain_dict(cfg.trainer)) else None
    if fabric is not None and fabric.global_rank != 0:  # the other ranks encode and search; rank 0 reports
        _, result = _evaluate(cfg, split, fabric)
        return {"metrics": result.metrics, "objective": result.metrics.get(PRIMARY_METRIC), "run_id": None}
    output_dir = Path(str(cfg.paths.output_dir))
    logger = build_mlflow_logger(run_spec(cfg))
    with terminal_status(logger):
        name, result = _evaluate(cfg, split, fabric)
        ranks = result.stats.get("ranks", [])
        atomic_write_json(output_dir / "metrics.json", result.metrics)
        atomic_write_json(output_dir / "per_query.json", result.per_query)
        atomic_write_json(output_dir / "encoding.json", {"world_size": len(ranks), "ranks": ranks})
        log_metrics(logger, {f"{split}/{k}": v for k, v in result.metrics.items()})
        log_metrics(logger, throughput_metrics(split, ranks))
        log_json(logger, result.per_query, f"metrics/{split}_per_query.json")
    print(f"\n[causalneg] {cfg.model.get('name', 'encoder')} on {name}/{split}:")
    for metric, value in sorted(result.metrics.items()):
        print(f"  {metric:>11}: {value:.4f}")
    for stats in ranks:
        hits = f", {stats['cache_hits']} shard(s) from the cache" if stats["cache_hits"] else ""
        print(
            f"  rank {stats['rank']}: {stats['passages_encoded']} passages in {stats['encode_seconds']:.1f} s "
            f"= {stats['passages_per_second']:.1f} passages/s ({stats['shards']} shard(s){hits})"
        )
    return {
        "metrics": result.metrics,
        "objective": result.metrics.get(PRIMARY_METRIC),
        "run_id": logger.run_id,
    }
