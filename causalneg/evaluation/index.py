"""Search one shard of the corpus: exact (torch matmul, today's default), or a faiss index (flat, IVF, HNSW).

``kind`` picks the index, per shard:

- ``flat`` (default): exact inner product by :func:`causalneg.evaluation.search.exact_topk` (torch); the
  results every earlier version of causalneg reported.
- ``faiss_flat``: exact too, through ``faiss.IndexFlatIP`` (faster BLAS on large shards; GPU when asked).
- ``ivf``: ``faiss.IndexIVFFlat`` with ``nlist`` k-means cells trained on the shard, ``nprobe`` cells visited
  per query; approximate. ``nlist`` is capped at ``N / 39`` (faiss wants >= 39 training points per cell).
- ``hnsw``: ``faiss.IndexHNSWFlat`` with ``M = hnsw_m`` links, ``efConstruction``, ``efSearch``; approximate.

All return ``(scores [Q, k], indices [Q, k])`` with indices into the shard's rows (``-1`` never leaks: an
approximate index that finds fewer than k hits is padded with ``-inf`` scores and dropped by the merge).
``gpu``: ``auto`` moves faiss indexes to GPU 0 when faiss has GPUs (``faiss.get_num_gpus() > 0``), ``true``
requires it, ``false`` never. How much recall the approximate indexes lose against ``flat``:
``experiments/bench_index_recall.py`` (numbers in SCALE.md).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from causalneg.errors import ConfigError, MissingDependencyError, reject_unknown_keys
from causalneg.evaluation.search import exact_topk

KINDS = ("flat", "faiss_flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    """Which index searches each shard (``eval.index`` in the config; see the module docstring)."""

    kind: str = "flat"
    nlist: int = 4096
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    gpu: str = "auto"  # auto | true | false

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"eval.index.kind must be one of {KINDS}, got {self.kind!r}")
        if str(self.gpu).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"eval.index.gpu must be auto, true or false, got {self.gpu!r}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"eval.index.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> IndexConfig:
        values = dict(values or {})
        reject_unknown_keys(values, cls.__dataclass_fields__, "eval.index")
        if "gpu" in values:
            values["gpu"] = str(values["gpu"]).lower()
        return cls(**values)

    @property
    def exact(self) -> bool:
        return self.kind in ("flat", "faiss_flat")


def _faiss() -> Any:
    if importlib.util.find_spec("faiss") is None:
        raise MissingDependencyError("faiss-cpu", hint="(or faiss-gpu) for eval.index.kind other than flat")
    import faiss

    return faiss


def build_faiss_index(doc_emb: np.ndarray, config: IndexConfig) -> Any:
    """A trained, filled faiss inner-product index over ``doc_emb [N, D]`` (float32, C-contiguous)."""
    faiss = _faiss()
    n, dim = doc_emb.shape
    if config.kind == "faiss_flat":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "ivf":
        nlist = max(1, min(config.nlist, n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(doc_emb)
        index.nprobe = min(config.nprobe, nlist)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    else:
        raise ConfigError(f"eval.index.kind={config.kind!r} is not a faiss index")
    use_gpu = config.gpu == "true" or (config.gpu == "auto" and faiss.get_num_gpus() > 0)
    if use_gpu:
        if faiss.get_num_gpus() == 0:
            raise ConfigError(
                "eval.index.gpu=true but faiss sees no GPU (install faiss-gpu on a GPU machine)"
            )
        if config.kind == "hnsw":  # faiss has no GPU HNSW; CAGRA is its GPU graph index
            raise ConfigError("eval.index.kind=hnsw has no GPU version in faiss; use gpu=false or kind=ivf")
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(doc_emb)
    return index


def search_shard(
    query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int, config: IndexConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` rows of ``doc_emb [N, D]`` per query of ``query_emb [Q, D]`` under ``config``."""
    if config.kind == "flat":
        return exact_topk(query_emb, doc_emb, k)
    k = min(k, doc_emb.size(0))
    docs = np.ascontiguousarray(doc_emb.detach().float().cpu().numpy())
    queries = np.ascontiguousarray(query_emb.detach().float().cpu().numpy())
    scores, indices = build_faiss_index(docs, config).search(queries, k)
    scores_t = torch.from_numpy(scores)
    indices_t = torch.from_numpy(indices.astype(np.int64))
    scores_t[indices_t < 0] = float("-inf")  # fewer than k hits (approximate index): padding, never merged
    return scores_t, indices_t
