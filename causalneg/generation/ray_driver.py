"""Ray Data drives the generation engine across workers; the driver then replays one job's pipeline.

``generation.ray.enabled=true`` (with ``generation.ray.address`` for an existing cluster, ``None``: a local
``ray.init()``) turns ``stage=generate`` into

1. ``ray.data.from_items(prompt inputs)`` -> ``map_batches(GenerationWorker,
   compute=ActorPoolStrategy(size=num_workers), num_gpus=num_gpus_per_worker, num_cpus=num_cpus_per_worker,
   batch_size=batch_size)``: each worker is a Ray
   actor that builds the configured backend once (vLLM on its GPUs, with ``generation.backend.
   tensor_parallel_size`` GPUs each; any backend on CPU) and runs :func:`run_pipeline` on its batches. It
   journals into its own file ``<journal>.ray-<worker id>.jsonl`` and starts from the main journal's finished
   requests, so a rerun after a failure only sends what is missing. Data parallelism = the number of workers.
2. The driver folds every worker journal into the main journal and replays the whole pipeline with
   :class:`~causalneg.generation.sharding.ReplayOnlyBackend`, exactly as the job-array merge does: the artifact,
   its rows and its fingerprint are those of one process (request keys do not depend on the worker).

Workers run the same filters as the driver (the similarity filter's encoder too): a request is retried when
all its negatives are rejected, so a worker that filtered differently would send other requests.

``generation=grounded`` runs the same way (:func:`generate_grounded_on_ray`): each :class:`GroundedWorker` loads
the dataset once (the verification's document frequencies are the whole corpus's) and runs
:func:`~causalneg.generation.grounded.pipeline.run_grounded` on its batches; the workers report their backend's
key signature (model id, whether it scores choices), which the driver's replay backend must present.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from causalneg.errors import ConfigError, MissingDependencyError, reject_unknown_keys
from causalneg.generation.prompting import PromptInputs
from causalneg.generation.store import RequestStore


@dataclass(frozen=True)
class RayOptions:
    """``generation.ray``: where the cluster is and how many workers with which resources."""

    enabled: bool = False
    address: str | None = None  # None: start a local Ray instance (ray.init()); "auto": the running cluster
    num_workers: int = 2  # actors, each with its own engine (data parallelism)
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0  # vLLM: = generation.backend.tensor_parallel_size
    batch_size: int = 16  # prompt inputs per map_batches call (each a pipeline run, journaled per chunk)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> RayOptions:
        values = dict(values or {})
        reject_unknown_keys(values, cls.__dataclass_fields__, "generation.ray")
        options = cls(**values)
        if options.num_workers < 1 or options.batch_size < 1:
            raise ConfigError("generation.ray.num_workers and generation.ray.batch_size must be positive")
        return options


def item_to_json(item: PromptInputs) -> str:
    return json.dumps(asdict(item), ensure_ascii=False)


def item_from_json(text: str) -> PromptInputs:
    data = json.loads(text)
    data["candidates"], data["answers"] = tuple(data["candidates"]), tuple(data["answers"])
    return PromptInputs(**data)


def worker_journals(journal: Path) -> list[Path]:
    """The worker journals written beside ``journal`` (``<stem>.ray-*.jsonl``), sorted."""
    return sorted(journal.parent.glob(f"{journal.stem}.ray-*{journal.suffix}"))


class GenerationWorker:
    """A Ray Data actor: one backend, one journal; ``__call__`` generates for a batch of prompt inputs."""

    def __init__(self, cfg: dict[str, Any], journal: str, filters: dict[str, Any]) -> None:
        from causalneg.generation.filters import FilterConfig
        from causalneg.stages.generate import worker_parts

        corpus_chars = filters.get("corpus_chars")
        self.filters = FilterConfig(
            **{**filters, "corpus_chars": tuple(corpus_chars) if corpus_chars else None}
        )
        self.settings, self.embed, self.backend = worker_parts(cfg, self.filters)
        self.store = worker_store(journal)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from causalneg.generation.pipeline import run_pipeline

        items = [item_from_json(str(text)) for text in batch["item"]]
        result = run_pipeline(items, self.backend, self.store, self.settings, self.filters, self.embed)
        return {
            "query_id": np.array([row["query_id"] for row in result.rows]),
            "kept": np.array([len(row["negatives"]) for row in result.rows]),
            "journal": np.array([str(self.store.path)] * len(result.rows)),
        }


def worker_store(journal: str) -> RequestStore:
    """A worker's own journal beside the main one (``<stem>.ray-<id>.jsonl``), seeded with the main journal's
    records so that a request finished elsewhere is not sent again."""
    main = Path(journal)
    store = RequestStore(main.with_name(f"{main.stem}.ray-{uuid.uuid4().hex[:12]}{main.suffix}"))
    store.records.update(RequestStore(main).records)
    return store


def grounded_item_to_json(item: Any) -> str:
    return json.dumps(asdict(item), ensure_ascii=False)


def grounded_item_from_json(text: str) -> Any:
    from causalneg.generation.grounded.pipeline import GroundedItem

    data = json.loads(text)
    data["positives"] = tuple(tuple(p) for p in data["positives"])
    data["answers"], data["titles"] = tuple(data["answers"]), tuple(data["titles"])
    return GroundedItem(**data)


class GroundedWorker:
    """A Ray Data actor for ``generation=grounded``: one backend, one journal, the dataset's document frequencies."""

    def __init__(self, cfg: dict[str, Any], journal: str) -> None:
        from causalneg.stages.generate_grounded import grounded_worker_parts

        self.settings, self.similarity, self.document_frequency, self.backend = grounded_worker_parts(cfg)
        self.store = worker_store(journal)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from causalneg.generation.grounded.pipeline import run_grounded

        items = [grounded_item_from_json(str(text)) for text in batch["item"]]
        result = run_grounded(
            items, self.backend, self.store, self.settings, self.similarity, self.document_frequency
        )
        n = len(result.rows)
        return {
            "query_id": np.array([row["query_id"] for row in result.rows]),
            "kept": np.array([len(row["negatives"]) for row in result.rows]),
            "journal": np.array([str(self.store.path)] * n),
            "model_id": np.array([str(self.backend.model_id)] * n),
            "scores": np.array([hasattr(self.backend, "choice_probabilities")] * n),
        }


def _init_ray(options: RayOptions) -> Any:
    if importlib.util.find_spec("ray") is None:
        raise MissingDependencyError("ray[data]", extra="ray", hint="for generation.ray.enabled=true")
    import ray

    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, ignore_reinit_error=True, log_to_driver=False)
        else:  # a local instance; its workers import this checkout of causalneg
            root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": path, "TORCHDYNAMO_DISABLE": "1"}},
            )
    return ray


def generate_on_ray(
    cfg: dict[str, Any], items: Sequence[PromptInputs], filters: Any, journal: Path, options: RayOptions
) -> dict[str, Any]:
    """Run every item's requests on Ray Data workers, fold their journals into ``journal``; returns stats."""
    kwargs = {"cfg": cfg, "journal": str(journal), "filters": asdict(filters)}
    stats, _ = _drive(GenerationWorker, kwargs, [item_to_json(item) for item in items], journal, options)
    return stats


def generate_grounded_on_ray(
    cfg: dict[str, Any], items: Sequence[Any], journal: Path, options: RayOptions
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """:func:`generate_on_ray` for ``generation=grounded`` items; also returns the workers' backend key
    signature (``{"model_id", "scores"}``; None when there was nothing to generate)."""
    kwargs = {"cfg": cfg, "journal": str(journal)}
    stats, out = _drive(GroundedWorker, kwargs, [grounded_item_to_json(i) for i in items], journal, options)
    signatures = {(str(row["model_id"]), bool(row["scores"])) for row in out}
    if len(signatures) > 1:
        raise ConfigError(f"generation.ray: the workers ran on different backends {sorted(signatures)}")
    signature = next(iter(signatures), None)
    return stats, None if signature is None else {"model_id": signature[0], "scores": signature[1]}


def _drive(
    worker: type, kwargs: dict[str, Any], items: list[str], journal: Path, options: RayOptions
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``map_batches(worker)`` over the JSON ``items``, then fold the worker journals; (stats, output rows)."""
    ray = _init_ray(options)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    rows = [{"item": item} for item in items]
    if not rows:
        return {"workers": 0, "queries": 0}, []
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), options.num_workers * 4)))
    out = dataset.map_batches(
        worker,
        fn_constructor_kwargs=kwargs,
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.num_workers),
        num_cpus=options.num_cpus_per_worker,
        num_gpus=options.num_gpus_per_worker or None,
    ).take_all()
    main = RequestStore(journal)
    folded = 0
    for path in worker_journals(journal):
        records = list(RequestStore(path).records.values())
        main.append(records)  # durable (fsync) before the worker journal goes
        folded += len(records)
        path.unlink()
    stats = {
        "workers": len({row["journal"] for row in out}),
        "queries": len(out),
        "journal_records_folded": folded,
    }
    return stats, out
