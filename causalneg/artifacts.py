"""Stage artifacts: content fingerprints, atomic writes, JSONL rows and a manifest per artifact folder.

An artifact is a folder holding ``rows.jsonl`` (one record per line) and ``manifest.json`` describing the
fingerprint of everything that determined it (config subtree, template and schema hashes, model id, seed,
input fingerprint) -- never batch size or worker count. Writes go to a temporary file in the same folder
and are renamed into place, so a reader never sees a half-written file.

**One lifecycle** for every artifact (mined and generated negatives): :func:`reusable` returns the manifest of
a complete folder whose fingerprint matches (the work is skipped); otherwise the caller builds the rows and
:func:`publish` writes them into a temporary sibling folder and renames it into place, so a failing or killed
run leaves no half artifact. Rows are read back with :func:`artifact_rows` (the one JSONL reader,
:func:`causalneg.data.readers.iter_json_objects`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from causalneg.data.readers import check_string, iter_json_objects
from causalneg.errors import DataError

ROWS_FILE = "rows.jsonl"
MANIFEST_FILE = "manifest.json"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same object always gives the same string."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(obj: Any, length: int = 64) -> str:
    """sha256 hex digest of ``canonical_json(obj)`` (stable across processes, unlike ``hash()``)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def file_fingerprint(path: str | Path, length: int = 64) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write all rows as JSON lines atomically; returns the number of rows written."""
    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


@dataclass
class Manifest:
    """What an artifact is and what determined it. ``fingerprint`` is the cache key of the artifact."""

    kind: str
    fingerprint: str
    inputs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    @classmethod
    def build(cls, kind: str, inputs: dict[str, Any], config: dict[str, Any], **counts: Any) -> Manifest:
        """A manifest whose fingerprint hashes (kind, inputs, config)."""
        key = fingerprint({"kind": kind, "inputs": inputs, "config": config})
        return cls(kind=kind, fingerprint=key, inputs=inputs, config=config, counts=dict(counts))


def write_artifact(directory: str | Path, rows: Iterable[dict[str, Any]], manifest: Manifest) -> Path:
    """Write ``rows.jsonl`` then ``manifest.json`` (the manifest last: its presence marks a complete artifact)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_rows = write_jsonl_atomic(directory / ROWS_FILE, rows)
    manifest.counts.setdefault("rows", n_rows)
    atomic_write_json(directory / MANIFEST_FILE, asdict(manifest))
    return directory


def load_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DataError("artifact is incomplete or missing (no manifest.json)", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(**data)
    except (json.JSONDecodeError, TypeError) as err:
        raise DataError(f"unreadable manifest: {err}", path=path) from None


def is_complete(directory: str | Path) -> bool:
    """An artifact is complete when both its rows and its manifest exist."""
    directory = Path(directory)
    return (directory / MANIFEST_FILE).is_file() and (directory / ROWS_FILE).is_file()


def artifact_rows(directory: str | Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_no, row)`` of a complete artifact's ``rows.jsonl`` (DataError when the artifact is incomplete)."""
    load_manifest(directory)
    return iter_json_objects(Path(directory) / ROWS_FILE, what)


def query_rows(
    directory: str | Path, what: str, field: str
) -> Iterator[tuple[int, str, list[Any], dict[str, Any]]]:
    """``(line_no, query_id, row[field], row)`` of an artifact with one row per query and a list ``field``
    (mined candidates, generated negatives); a row without them raises DataError naming file, line and field."""
    path = Path(directory) / ROWS_FILE
    for line, row in artifact_rows(directory, what):
        qid = check_string(row.get("query_id"), path, line, "query_id", allow_empty=False)
        items = row.get(field)
        if not isinstance(items, list):
            raise DataError("expected a list", path=path, line=line, field=field)
        yield line, qid, items, row


def reusable(
    directory: str | Path, fingerprint: str, accept: Callable[[Manifest], bool] | None = None
) -> Manifest | None:
    """The manifest of the complete artifact in ``directory`` when its fingerprint is ``fingerprint`` (and
    ``accept`` takes it, e.g. "no request failed at the backend"), else None: the artifact must be built."""
    if not is_complete(directory):
        return None
    manifest = load_manifest(directory)
    if manifest.fingerprint != fingerprint or (accept is not None and not accept(manifest)):
        return None
    return manifest


def publish(
    directory: str | Path, write: Callable[[Path], Any], replace: Callable[[Manifest], bool] | None = None
) -> Path:
    """``write(tmp)`` into a temporary sibling folder, then rename it to ``directory``.

    A complete folder already there (published meanwhile by a concurrent run of the same config) wins unless
    ``replace(its manifest)``; a stale, incomplete one is removed. The temporary folder never outlives the call.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        write(tmp)
        if directory.exists():
            keep = is_complete(directory) and not (replace is not None and replace(load_manifest(directory)))
            if keep:
                return directory
            shutil.rmtree(directory)
        try:
            os.replace(tmp, directory)
        except OSError:
            if not is_complete(directory):  # not a concurrent writer's complete folder: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
