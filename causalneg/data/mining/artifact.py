"""The mined-negatives artifact: ``${paths.artifacts_dir}/<dataset>/mined/<method>-<fingerprint[:12]>/`` with
``rows.jsonl`` + ``manifest.json``.

One row per selected query, in selection order (queries left with no candidate keep an empty list, so the
manifest's ``queries_without_candidates`` can be checked against the rows)::

    {"query_id": str, "positive_ids": [str, ...],
     "candidates": [{"id": str, "score": float, "rank": int}, ...]}

candidates best first, positives and filtered candidates removed, ``rank`` = 1-based rank among the retrieved
non-positives (:mod:`causalneg.data.mining.filters`).

**Which queries.** :func:`mining_query_ids` = :func:`causalneg.data.selection.select_query_ids` with the same
arguments the DataModule uses: ``data.max_train_queries`` for the training split, ``data.max_dev_queries`` for
the dev split (all queries otherwise), seeded by ``data.selection_seed``; so mining, generation and training
see the same queries.

**Fingerprint** (the folder name and reuse key) = hash of the dataset fingerprint, split, selected query ids,
the ``mining`` config without the keys that do not change results (batch size, search chunk size, cache flag)
and, for dense mining, the resolved ``model`` config. The model is identified by its config, not its weight
bytes: a checkpoint rewritten in place at the same path needs a new ``mining`` or ``model`` value (e.g. name).

The folder is written complete or not at all: rows and manifest go to a temporary sibling folder that is
renamed into place, so a failing or killed mine leaves no half artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from causalneg.artifacts import ROWS_FILE, Manifest, fingerprint, is_complete, load_manifest, write_artifact
from causalneg.data.mining.bm25 import BM25Options, mine_bm25
from causalneg.data.mining.filters import Candidate, FilterConfig, RankedCandidates, filter_all
from causalneg.data.readers import check_string, iter_json_objects
from causalneg.data.selection import select_query_ids
from causalneg.errors import ConfigError, DataError
from causalneg.precision import encode_device_type, resolve_precision
from causalneg.records import RetrievalDataset

if TYPE_CHECKING:
    from causalneg.models.encoder import DualEncoder

KIND = "mined"
METHODS = ("bm25", "dense")
IGNORED_KEYS = {"dense": ("batch_size", "chunk_size", "cache", "progress", "shard_size")}


def _container(node: Any) -> dict[str, Any]:
    value = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def mining_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved ``mining`` subtree without the keys that do not change the result."""
    if cfg.get("mining") is None:
        raise ConfigError("no mining configured: choose mining=bm25 or mining=dense")
    mining = _container(cfg.mining)
    if mining.get("method") not in METHODS:
        raise ConfigError(f"mining.method={mining.get('method')!r} is not one of {METHODS}")
    for block, keys in IGNORED_KEYS.items():
        if isinstance(mining.get(block), dict):
            mining[block] = {k: v for k, v in mining[block].items() if k not in keys}
    dense = mining.get("dense")
    if (
        isinstance(dense, dict) and "precision" in dense
    ):  # the resolved one: auto on fp32 = today's fingerprint
        dense["precision"] = resolve_precision(str(dense["precision"]), encode_device_type(), "encode")
    return mining


def filter_config(mining: dict[str, Any]) -> FilterConfig:
    """The filter settings of a ``mining`` mapping (see conf/mining/*.yaml)."""
    try:
        return FilterConfig(
            rank_min=int(mining.get("rank_min", 1)),
            rank_max=mining.get("rank_max"),
            absolute_margin=mining.get("absolute_margin"),
            relative_margin=mining.get("relative_margin"),
            positive_score=mining.get("positive_score", "max"),
            max_per_query=mining.get("max_per_query"),
        )
    except ValueError as err:
        raise ConfigError(f"mining: {err}") from None


def mining_query_ids(cfg: DictConfig, dataset: RetrievalDataset, split: str) -> list[str]:
    """The queries of ``split`` that get mined (module docstring)."""
    if split not in dataset.splits:
        raise ConfigError(
            f"mining.split={split!r} is not a split of '{dataset.name}' ({sorted(dataset.splits)})"
        )
    seed = OmegaConf.select(cfg, "data.selection_seed", default=cfg.get("seed", 0))
    limit = None
    if split == OmegaConf.select(cfg, "dataset.train_split"):
        limit = OmegaConf.select(cfg, "data.max_train_queries", default=None)
    elif split == OmegaConf.select(cfg, "dataset.dev_split"):
        limit = OmegaConf.select(cfg, "data.max_dev_queries", default=None)
    return select_query_ids(dataset.split(split), limit, int(seed))


def mining_manifest(cfg: DictConfig, dataset: RetrievalDataset) -> tuple[Manifest, list[str]]:
    """The manifest (without counts) that identifies this mining run, and the selected query ids."""
    mining = mining_config(cfg)
    split = str(mining.get("split") or "")
    if not split:
        raise ConfigError("mining.split is not set (e.g. mining.split=${dataset.train_split})")
    query_ids = mining_query_ids(cfg, dataset, split)
    inputs: dict[str, Any] = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "split": split,
        "query_ids": fingerprint(query_ids),
    }
    if mining["method"] == "dense":
        inputs["model"] = _container(cfg.model)
    return Manifest.build(KIND, inputs, mining), query_ids


def _directory(cfg: DictConfig, dataset: RetrievalDataset, manifest: Manifest) -> Path:
    root = Path(str(cfg.paths.artifacts_dir))
    return root / dataset.name / KIND / f"{manifest.config['method']}-{manifest.fingerprint[:12]}"


def mined_artifact_dir(cfg: DictConfig, dataset: RetrievalDataset) -> Path:
    """Where the mined artifact of ``cfg`` on ``dataset`` lives (whether or not it exists yet)."""
    return _directory(cfg, dataset, mining_manifest(cfg, dataset)[0])


def bm25_options(mining: dict[str, Any]) -> BM25Options:
    try:
        return BM25Options(**(mining.get("bm25") or {}))
    except TypeError as err:
        raise ConfigError(f"mining.bm25: {err}") from None


def _retrieve(
    cfg: DictConfig,
    dataset: RetrievalDataset,
    query_ids: list[str],
    encoder: Callable[[], DualEncoder],
    distributed: bool = False,
) -> list[RankedCandidates]:
    mining = _container(cfg.mining)
    split, top_k = str(mining["split"]), int(mining.get("top_k", 100))
    if mining["method"] == "bm25":
        return mine_bm25(dataset, split, query_ids, top_k, bm25_options(mining))
    from causalneg.data.mining.dense import mine_dense
    from causalneg.evaluation.embedding_cache import EmbeddingCache

    dense = mining.get("dense") or {}
    cache = (
        EmbeddingCache(Path(str(cfg.paths.cache_dir)) / "embeddings") if dense.get("cache", True) else None
    )
    return mine_dense(
        dataset,
        split,
        query_ids,
        encoder(),
        top_k,
        batch_size=int(dense.get("batch_size", 128)),
        precision=str(dense.get("precision", "32-true")),
        cache=cache,
        chunk_size=int(dense.get("chunk_size", 16384)),
        progress=bool(dense.get("progress", False)),
        shard_size=dense.get("shard_size"),
        distributed=distributed,
    )


def with_grades(ranked: list[RankedCandidates], qrels: dict[str, dict[str, int]]) -> list[RankedCandidates]:
    """Each query's positives' qrels grades attached (``mining.positive_score=best_graded``)."""
    return [
        replace(r, positive_grades={p: int(qrels.get(r.query_id, {}).get(p, 1)) for p in r.positive_ids})
        for r in ranked
    ]


def mined_rows(ranked: list[RankedCandidates], kept: dict[str, list[Candidate]]) -> list[dict[str, Any]]:
    return [
        {
            "query_id": r.query_id,
            "positive_ids": list(r.positive_ids),
            "candidates": [{"id": c.id, "score": c.score, "rank": c.rank} for c in kept[r.query_id]],
        }
        for r in ranked
    ]


def _publish(tmp: Path, directory: Path) -> None:
    """Rename the finished temporary folder into place; a complete folder written meanwhile wins."""
    if directory.exists():
        if is_complete(directory):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(directory)  # a stale, incomplete folder (older layout or manual copy)
    try:
        os.replace(tmp, directory)
    except OSError:
        if not is_complete(directory):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _rank() -> int:
    import torch.distributed as dist  # not at module level: BM25 mining never imports torch

    return dist.get_rank()


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def ensure_mined(
    cfg: DictConfig,
    dataset: RetrievalDataset,
    encoder: DualEncoder | None = None,
    encoder_factory: Callable[[], DualEncoder] | None = None,
    distributed: bool = False,
) -> Path:
    """The complete mined artifact for ``cfg.mining`` on ``dataset``: reused if present, else mined.

    Dense mining uses ``encoder``, else ``encoder_factory()``, else ``DualEncoder.from_config(cfg.model)``
    (built only when mining actually runs). With ``distributed`` (``stage=mine`` under a multi-process trainer)
    every rank of the process group must call this: each encodes and searches its corpus shards, rank 0 writes
    the artifact, and all return after it is complete.
    """
    manifest, query_ids = mining_manifest(cfg, dataset)
    directory = _directory(cfg, dataset, manifest)
    if is_complete(directory) and load_manifest(directory).fingerprint == manifest.fingerprint:
        return directory

    def get_encoder() -> DualEncoder:
        if encoder is not None:
            return encoder
        if encoder_factory is not None:
            return encoder_factory()
        from causalneg.models.encoder import DualEncoder

        return DualEncoder.from_config(_container(cfg.model), cache_dir=str(cfg.paths.cache_dir))

    started = time.perf_counter()
    ranked = _retrieve(cfg, dataset, query_ids, get_encoder, distributed)
    if distributed and _rank() != 0:
        _barrier()  # rank 0 writes the artifact
        return directory
    ranked = with_grades(ranked, dataset.split(str(manifest.config["split"])).qrels)
    kept, counts = filter_all(ranked, filter_config(manifest.config))
    manifest.counts = {**counts, "seconds": round(time.perf_counter() - started, 3)}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        write_artifact(tmp, mined_rows(ranked, kept), manifest)
        _publish(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if distributed:
            _barrier()
    return directory


def load_mined(directory: str | Path) -> dict[str, list[tuple[str, float]]]:
    """``{query_id: [(passage_id, score), ...]}`` best first, from a complete artifact folder."""
    load_manifest(directory)  # raises DataError when the artifact is incomplete
    path = Path(directory) / ROWS_FILE
    mined: dict[str, list[tuple[str, float]]] = {}
    for line, row in iter_json_objects(path, "mined negatives (rows.jsonl)"):
        qid = check_string(row.get("query_id"), path, line, "query_id", allow_empty=False)
        candidates = row.get("candidates")
        if not isinstance(candidates, list):
            raise DataError("expected a list", path=path, line=line, field="candidates")
        pairs = []
        for cand in candidates:
            if not isinstance(cand, dict) or not isinstance(cand.get("score"), int | float):
                raise DataError(
                    "expected {'id': str, 'score': number, ...}", path=path, line=line, field="candidates"
                )
            pairs.append(
                (
                    check_string(cand.get("id"), path, line, "candidates.id", allow_empty=False),
                    float(cand["score"]),
                )
            )
        mined[qid] = pairs
    return mined
