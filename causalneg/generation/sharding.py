"""Static sharding of ``stage=generate`` for job arrays, and the merge that rebuilds the one-job artifact.

``generation.shard=i/n`` (``0 <= i < n``) generates for the ``i``-th of ``n`` contiguous slices of the selected
queries (the same :func:`causalneg.evaluation.sharded.shard_bounds` split as corpus shards) and writes

- its own request journal, ``<journal>.shard-<i>-of-<n>.jsonl`` (no lock contention between jobs, no shared
  file on a filesystem whose ``flock`` is unreliable), and
- a shard receipt ``<artifact>.shards/shard-<i>-of-<n>.json``: the artifact's fingerprint, the shard's query
  ids and counts. The artifact itself is not written by a shard job.

``generation.shard=merge/n`` then checks that the ``n`` receipts exist and carry this config's fingerprint,
folds the ``n`` shard journals into the main journal (:meth:`RequestStore.append` skips known keys), and runs
the ordinary single-job path with a backend that refuses to generate (:class:`ReplayOnlyBackend`): every
request is a journal hit, so the pipeline replays exactly what one job over all queries would have computed.
Rows, rejections, decompositions and the manifest's fingerprint are therefore those of a single run, by
construction: request keys depend on (template, schema, model, backend signature, sampling, seed, query id,
stage, attempt), never on which job or batch sent them.

A shard that did not finish makes the merge fail naming the shard (``ConfigError``); rerun that
``generation.shard=i/n`` (it resumes from its own journal) and merge again.

``generation=grounded`` shards the same way (:mod:`causalneg.stages.generate_grounded`). Its request keys also
carry ``+scores`` for the judge's stages when the generating backend scores choices, so each receipt records the
generating backend's key signature (``model_id``, ``scores``) and the merge replays with a backend that presents
the same one (:func:`grounded_replay_backend`). The grounded pipeline turns a ``ConfigError`` from its backend
into one failed request (a schema the engine cannot compile), so its replay backend raises :class:`ReplayMiss`
instead, which the stage reports as a ``ConfigError`` naming the missing requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from causalneg.artifacts import atomic_write_json
from causalneg.errors import ConfigError
from causalneg.evaluation.sharded import shard_bounds
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.store import RequestStore

_SHARD = re.compile(r"^\s*(\d+|merge)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class ShardSpec:
    """``index`` of ``count`` (``index`` None: the merge step)."""

    index: int | None
    count: int

    @property
    def is_merge(self) -> bool:
        return self.index is None

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(value: Any) -> ShardSpec | None:
    """``"i/n"`` -> ShardSpec(i, n); ``"merge/n"`` -> ShardSpec(None, n); None/empty -> None."""
    if value is None or str(value).strip() in ("", "null", "None"):
        return None
    match = _SHARD.match(str(value))
    if not match:
        raise ConfigError(f"generation.shard must look like 'i/n' or 'merge/n', got {value!r}")
    count = int(match.group(2))
    if count < 1:
        raise ConfigError(f"generation.shard={value!r}: n must be at least 1")
    if match.group(1) == "merge":
        return ShardSpec(None, count)
    index = int(match.group(1))
    if not 0 <= index < count:
        raise ConfigError(f"generation.shard={value!r}: i must be in 0..{count - 1}")
    return ShardSpec(index, count)


def shard_items(items: Sequence[Any], spec: ShardSpec) -> list[Any]:
    """The ``spec.index``-th of ``spec.count`` contiguous slices of ``items`` (empty when there are fewer)."""
    assert spec.index is not None
    bounds = shard_bounds(len(items), None, spec.count)
    return list(items[bounds[spec.index][0] : bounds[spec.index][1]]) if spec.index < len(bounds) else []


def shard_journal(journal: Path, spec: ShardSpec, index: int | None = None) -> Path:
    """``<journal stem>.shard-<i>-of-<n>.jsonl`` beside the main journal."""
    tag = ShardSpec(spec.index if index is None else index, spec.count).tag
    return journal.with_name(f"{journal.stem}.{tag}{journal.suffix}")


def receipt_path(artifact_dir: Path, spec: ShardSpec, index: int | None = None) -> Path:
    tag = ShardSpec(spec.index if index is None else index, spec.count).tag
    return artifact_dir.with_name(f"{artifact_dir.name}.shards") / f"{tag}.json"


def write_receipt(
    artifact_dir: Path,
    spec: ShardSpec,
    fingerprint: str,
    query_ids: list[str],
    counts: dict,
    backend: dict[str, Any] | None = None,
) -> Path:
    """The shard's receipt; ``backend``: the generating backend's key signature (:func:`backend_key_signature`)."""
    path = receipt_path(artifact_dir, spec)
    receipt = {"fingerprint": fingerprint, "shard": [spec.index, spec.count], "query_ids": query_ids}
    atomic_write_json(path, {**receipt, "counts": counts, **({"backend": backend} if backend else {})})
    return path


def backend_key_signature(backend: Any) -> dict[str, Any]:
    """What of a backend enters request keys: its ``model_id``, and whether it scores choices (the grounded
    judge's keys then end in ``+scores``)."""
    return {"model_id": str(backend.model_id), "scores": hasattr(backend, "choice_probabilities")}


def fold_shard_journals(
    artifact_dir: Path, journal: Path, spec: ShardSpec, fingerprint: str
) -> dict[str, int]:
    """Check the ``n`` receipts, append every shard journal's records to ``journal``; ``{shard tag: records}``."""
    missing, stale = [], []
    for i in range(spec.count):
        path = receipt_path(artifact_dir, spec, i)
        if not path.is_file():
            missing.append(f"{i}/{spec.count}")
        elif json.loads(path.read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
            stale.append(f"{i}/{spec.count}")
    if missing or stale:
        raise ConfigError(
            f"cannot merge {spec.count} generation shards: unfinished {missing or 'none'}, from another config "
            f"{stale or 'none'} (receipts in {receipt_path(artifact_dir, spec, 0).parent}); rerun "
            "`stage=generate generation.shard=i/n` with the same overrides for each"
        )
    main = RequestStore(journal)
    folded = {}
    for i in range(spec.count):
        shard = RequestStore(shard_journal(journal, spec, i))
        main.append(list(shard.records.values()))
        folded[ShardSpec(i, spec.count).tag] = len(shard.records)
    return folded


class ReplayMiss(RuntimeError):
    """A request in no shard journal, from a grounded replay (not a ``ConfigError``: see the module docstring)."""


class ReplayOnlyBackend:
    """A backend for the merge step: every request must already be in the journal; a call is an error."""

    name = "replay"
    refusal: type[Exception] = ConfigError

    def __init__(self, spec: ShardSpec | None, model_id: str) -> None:
        self.spec = spec
        self.model_id = model_id  # part of every request key: the generator's id, as the shard jobs used
        self.missing: list[str] = []  # keys of the requests it was asked for

    def message(self) -> str:
        keys = ", ".join(k[:12] for k in self.missing[:3])
        where = f"merge of {self.spec.count} shards" if self.spec else "replay after the Ray Data workers"
        return (
            f"{where}: {len(self.missing)} request(s) are in no worker/shard journal (e.g. {keys}); a job stopped "
            "early or ran with other overrides: rerun it (finished requests are reused), then merge again"
        )

    def refuse(self, requests: Sequence[GenerationRequest]) -> Exception:
        self.missing += [r.key for r in requests]
        return self.refusal(self.message())

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        raise self.refuse(requests)

    def close(self) -> None:
        return None


class GroundedReplayBackend(ReplayOnlyBackend):
    """The grounded merge's replay backend for a generator that does not score choices."""

    refusal = ReplayMiss


class ScoringReplayBackend(GroundedReplayBackend):
    """The grounded merge's replay backend for a generator that scores choices (the judge's keys: ``+scores``)."""

    def choice_probabilities(
        self, requests: Sequence[GenerationRequest], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        raise self.refuse(requests)


def grounded_replay_backend(artifact_dir: Path, spec: ShardSpec) -> GroundedReplayBackend:
    """A replay backend with the key signature that the ``spec.count`` shard receipts record (all the same)."""
    signatures = []
    for i in range(spec.count):
        receipt = json.loads(receipt_path(artifact_dir, spec, i).read_text(encoding="utf-8"))
        if "backend" not in receipt:
            raise ConfigError(
                f"generation.shard={i}/{spec.count}: its receipt records no backend signature (written by an "
                "older version); rerun that shard (its requests are reused), then merge again"
            )
        signatures.append(receipt["backend"])
    if any(s != signatures[0] for s in signatures):
        raise ConfigError(
            f"generation.shard=merge/{spec.count}: the shards ran on different backends {signatures}; rerun "
            "them with the same generation/backend and generation/model"
        )
    return grounded_replay(spec, signatures[0])


def grounded_replay(spec: ShardSpec | None, signature: dict[str, Any]) -> GroundedReplayBackend:
    """A grounded replay backend with ``signature`` (:func:`backend_key_signature`); ``spec`` None: after Ray."""
    cls = ScoringReplayBackend if signature["scores"] else GroundedReplayBackend
    return cls(spec, str(signature["model_id"]))
