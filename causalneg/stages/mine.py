"""stage=mine: mine hard negatives for the training split (and the dev split when ``data.mine_dev``) and write
them as artifacts (causalneg.data.mining.artifact). An existing complete artifact with the same fingerprint is
reused, so running the stage twice mines once. Dense mining under a multi-process trainer (``trainer=ddp
trainer.devices=N``) encodes and searches the corpus shards on N ranks (``mining.dense.shard_size``).

    python run.py stage=mine [mining=bm25|dense] [dataset=...] [data.max_train_queries=N]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from causalneg.artifacts import load_manifest
from causalneg.config import check_required, plain_dict
from causalneg.data.mining.artifact import ensure_mined
from causalneg.stages.specs import load_dataset, mining_spec, selection

if TYPE_CHECKING:
    from causalneg.models.encoder import DualEncoder

SHOWN = ("queries", "considered", "positive", "above_rank_max", "absolute_margin", "relative_margin", "kept")


def _splits(cfg: DictConfig) -> list[str]:
    """The mining split, then the dataset's dev split when the DataModule will want it (``data.mine_dev``)."""
    splits = [str(cfg.mining.split)]
    dev = OmegaConf.select(cfg, "dataset.dev_split")
    if dev and OmegaConf.select(cfg, "data.mine_dev", default=True) and dev not in splits:
        splits.append(str(dev))
    return splits


def run(cfg: DictConfig) -> dict[str, Any]:
    check_required(cfg)
    # BM25 needs neither torch threads nor transformers: import them (seconds) only for dense mining.
    if str(cfg.mining.method) == "dense":
        from causalneg.stages.common import apply_runtime

        apply_runtime(cfg)
    dataset = load_dataset(cfg)
    encoder: DualEncoder | None = None
    fabric = None
    if str(cfg.mining.method) == "dense" and cfg.get("trainer") is not None:
        from causalneg.evaluation.launch import launch_fabric, wants_processes

        trainer = plain_dict(cfg.trainer)
        if wants_processes(trainer):  # trainer=ddp trainer.devices=N: each rank mines on its corpus shards
            fabric = launch_fabric(trainer)

    def factory() -> DualEncoder:
        from causalneg.stages.common import build_encoder

        nonlocal encoder  # one encoder for both splits, built only if some split is actually mined
        if encoder is None:
            encoder = build_encoder(cfg) if fabric is None else build_encoder(cfg).to(fabric.device)
        return encoder

    artifacts: dict[str, str] = {}
    counts: dict[str, dict[str, Any]] = {}
    for split in _splits(cfg):
        directory = ensure_mined(
            mining_spec(cfg, split),
            dataset,
            selection(cfg, dataset, split),
            encoder_factory=factory,
            distributed=fabric is not None,
        )
        artifacts[split] = str(directory)
        counts[split] = load_manifest(directory).counts
    if fabric is not None and fabric.global_rank != 0:
        return {"artifacts": artifacts, "counts": counts}
    print(f"\n[causalneg] {cfg.mining.method} mining on {dataset.name}:")
    for split, c in counts.items():
        summary = ", ".join(f"{k}={c.get(k, 0)}" for k in SHOWN)
        print(f"  {split}: {summary}; queries without candidates={c.get('queries_without_candidates', 0)}")
        print(f"    -> {artifacts[split]}")
    return {"artifacts": artifacts, "counts": counts}
