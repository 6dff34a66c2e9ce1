"""The mined-negatives artifact: ``${paths.artifacts_dir}/<dataset>/mined/<method>-<fingerprint[:12]>/`` with
``rows.jsonl`` + ``manifest.json``.

One row per selected query, in selection order (queries left with no candidate keep an empty list, so the
manifest's ``queries_without_candidates`` can be checked against the rows)::

    {"query_id": str, "positive_ids": [str, ...],
     "candidates": [{"id": str, "score": float, "rank": int}, ...]}

candidates best first, positives and filtered candidates removed, ``rank`` = 1-based rank among the retrieved
non-positives (:mod:`causalneg.data.mining.filters`).

**What it takes.** A :class:`MiningSpec` (the resolved ``mining`` settings with their split, the encoder config
for dense mining, the artifact and cache folders) and the split's :class:`~causalneg.data.selection.Selection`,
both built once by the stages (:mod:`causalneg.stages.specs`), so mining, generation and training see the same
queries. Nothing here reads the Hydra config.

**Fingerprint** (the folder name and reuse key) = hash of the dataset fingerprint, split, selected query ids,
the ``mining`` config without the keys that do not change results (batch size, search chunk size, cache flag)
and, for dense mining, the resolved ``model`` config. The model is identified by its config, not its weight
bytes: a checkpoint rewritten in place at the same path needs a new ``mining`` or ``model`` value (e.g. name).

The folder follows the artifact lifecycle of :mod:`causalneg.artifacts`: reused when complete with the same
fingerprint, else mined and published atomically (a failing or killed mine leaves no half artifact).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalneg.artifacts import ROWS_FILE, Manifest, publish, query_rows, reusable, write_artifact
from causalneg.data.mining.bm25 import BM25Options, mine_bm25
from causalneg.data.mining.filters import Candidate, FilterConfig, RankedCandidates, filter_all
from causalneg.data.readers import check_string
from causalneg.data.selection import Selection
from causalneg.errors import ConfigError, DataError
from causalneg.precision import encode_device_type, resolve_precision
from causalneg.records import RetrievalDataset

if TYPE_CHECKING:
    from causalneg.models.encoder import DualEncoder

KIND = "mined"
METHODS = ("bm25", "dense")
IGNORED_KEYS = {"dense": ("batch_size", "chunk_size", "cache", "progress", "shard_size")}


@dataclass(frozen=True)
class MiningSpec:
    """One mining run: the resolved ``mining`` settings (``split`` included), the encoder config that dense mining
    encodes with, and where artifacts and embedding caches live. :attr:`config` is what the fingerprint hashes."""

    settings: Mapping[str, Any]
    artifacts_dir: Path
    cache_dir: Path
    model: Mapping[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.settings.get("method") not in METHODS:
            raise ConfigError(f"mining.method={self.settings.get('method')!r} is not one of {METHODS}")
        if not self.settings.get("split"):
            raise ConfigError("mining.split is not set (e.g. mining.split=${dataset.train_split})")

    @property
    def method(self) -> str:
        return str(self.settings["method"])

    @property
    def split(self) -> str:
        return str(self.settings["split"])

    @property
    def config(self) -> dict[str, Any]:
        """The settings without the keys that do not change the result."""
        mining = dict(self.settings)
        for block, keys in IGNORED_KEYS.items():
            if isinstance(mining.get(block), dict):
                mining[block] = {k: v for k, v in mining[block].items() if k not in keys}
        dense = mining.get("dense")
        if (
            isinstance(dense, dict) and "precision" in dense
        ):  # the resolved one: auto on fp32 = today's fingerprint
            dense = mining["dense"] = dict(dense)
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


def mining_manifest(spec: MiningSpec, dataset: RetrievalDataset, selection: Selection) -> Manifest:
    """The manifest (without counts) that identifies this mining run; cheap (nothing is mined)."""
    if spec.split not in dataset.splits:
        raise ConfigError(
            f"mining.split={spec.split!r} is not a split of '{dataset.name}' ({sorted(dataset.splits)})"
        )
    if selection.split != spec.split:
        raise ConfigError(f"the selection is of split {selection.split!r}, mining.split is {spec.split!r}")
    inputs: dict[str, Any] = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "split": spec.split,
        "query_ids": selection.fingerprint,
    }
    if spec.method == "dense":
        inputs["model"] = dict(spec.model or {})
    return Manifest.build(KIND, inputs, spec.config)


def mined_artifact_dir(spec: MiningSpec, dataset: RetrievalDataset, manifest: Manifest) -> Path:
    """Where the mined artifact with ``manifest`` lives (whether or not it exists yet)."""
    return spec.artifacts_dir / dataset.name / KIND / f"{spec.method}-{manifest.fingerprint[:12]}"


def bm25_options(mining: dict[str, Any]) -> BM25Options:
    try:
        return BM25Options(**(mining.get("bm25") or {}))
    except TypeError as err:
        raise ConfigError(f"mining.bm25: {err}") from None


def _retrieve(
    spec: MiningSpec,
    dataset: RetrievalDataset,
    query_ids: list[str],
    encoder: Callable[[], DualEncoder],
    distributed: bool = False,
) -> list[RankedCandidates]:
    mining = spec.config  # dense.precision resolved (auto -> bf16 only on native bf16)
    top_k = int(mining.get("top_k", 100))
    if spec.method == "bm25":
        return mine_bm25(dataset, spec.split, query_ids, top_k, bm25_options(dict(mining)))
    from causalneg.data.mining.dense import mine_dense
    from causalneg.evaluation.embedding_cache import EmbeddingCache

    dense = mining.get("dense") or {}
    cache = EmbeddingCache(spec.cache_dir / "embeddings") if dense.get("cache", True) else None
    return mine_dense(
        dataset,
        spec.split,
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


def _rank() -> int:
    import torch.distributed as dist  # not at module level: BM25 mining never imports torch

    return dist.get_rank()


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def ensure_mined(
    spec: MiningSpec,
    dataset: RetrievalDataset,
    selection: Selection,
    encoder_factory: Callable[[], DualEncoder] | None = None,
    distributed: bool = False,
) -> Path:
    """The complete mined artifact for ``spec`` over ``selection`` on ``dataset``: reused if present, else mined.

    Dense mining uses ``encoder_factory()``, else ``DualEncoder.from_config(spec.model)`` (built only when mining
    actually runs). With ``distributed`` (``stage=mine`` under a multi-process trainer) every rank of the process
    group must call this: each encodes and searches its corpus shards, rank 0 writes the artifact, and all return
    after it is complete.
    """
    manifest = mining_manifest(spec, dataset, selection)
    directory = mined_artifact_dir(spec, dataset, manifest)
    if reusable(directory, manifest.fingerprint) is not None:
        return directory

    def get_encoder() -> DualEncoder:
        if encoder_factory is not None:
            return encoder_factory()
        from causalneg.models.encoder import DualEncoder

        return DualEncoder.from_config(dict(spec.model or {}), cache_dir=str(spec.cache_dir))

    started = time.perf_counter()
    ranked = _retrieve(spec, dataset, list(selection.query_ids), get_encoder, distributed)
    if distributed and _rank() != 0:
        _barrier()  # rank 0 writes the artifact
        return directory
    ranked = with_grades(ranked, dataset.split(str(manifest.config["split"])).qrels)
    kept, counts = filter_all(ranked, filter_config(manifest.config))
    manifest.counts = {**counts, "seconds": round(time.perf_counter() - started, 3)}
    try:
        publish(directory, lambda tmp: write_artifact(tmp, mined_rows(ranked, kept), manifest))
    finally:
        if distributed:
            _barrier()
    return directory


def load_mined(directory: str | Path) -> dict[str, list[tuple[str, float]]]:
    """``{query_id: [(passage_id, score), ...]}`` best first, from a complete artifact folder."""
    path = Path(directory) / ROWS_FILE
    mined: dict[str, list[tuple[str, float]]] = {}
    for line, qid, candidates, _ in query_rows(directory, "mined negatives (rows.jsonl)", "candidates"):
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
