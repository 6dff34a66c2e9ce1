"""On-disk cache of text embeddings, so the same corpus is encoded once per set of weights.

Mining, evaluation of the starting model and diagnostics all encode the same corpus with the same weights; the
cache key (:func:`embedding_key`) is the fingerprint of everything that determines the vectors -- the weights
fingerprint, the texts, the side, its max length and prefix, pooling, normalisation and precision -- and of
nothing that does not (batch size, bucketing, thread count). Each entry is ``<key>.npy`` (float32
``[N, D]``) plus ``<key>.json`` (shape and the key's inputs), both written atomically; the JSON is written
last and marks a complete entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalneg.artifacts import atomic_write_json, fingerprint


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 over the texts in order, each length-prefixed (``["ab", "c"]`` and ``["a", "bc"]`` differ)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def embedding_key(
    weights_fingerprint: str,
    texts_fp: str,
    side: str,
    max_length: int,
    prefix: str,
    pooling: str,
    normalize: bool,
    precision: str,
) -> tuple[str, dict[str, Any]]:
    """Return ``(key, inputs)``: the cache key and the JSON-able inputs it hashes."""
    inputs = {
        "weights": weights_fingerprint,
        "texts": texts_fp,
        "side": side,
        "max_length": int(max_length),
        "prefix": prefix,
        "pooling": pooling,
        "normalize": bool(normalize),
        "precision": precision,
    }
    return fingerprint(inputs), inputs


class EmbeddingCache:
    """A folder of cached embedding matrices: ``get(key) -> Tensor | None``, ``put(key, tensor, inputs)``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _paths(self, key: str) -> tuple[Path, Path]:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex digest, got {key!r}")
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        array_path, meta_path = self._paths(key)
        return array_path.is_file() and meta_path.is_file()

    def get(self, key: str) -> torch.Tensor | None:
        """The cached ``[N, D]`` float32 tensor, or None when absent or unreadable (a miss either way)."""
        array_path, meta_path = self._paths(key)
        if not (array_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            array = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if list(array.shape) != meta.get("shape"):
            return None
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def put(self, key: str, embeddings: torch.Tensor, inputs: dict[str, Any] | None = None) -> Path:
        """Store ``embeddings [N, D]`` as float32 under ``key``; returns the ``.npy`` path."""
        array_path, meta_path = self._paths(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        array = embeddings.detach().to(torch.float32).cpu().numpy()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, array_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_write_json(meta_path, {"key": key, "shape": list(array.shape), "inputs": inputs or {}})
        return array_path
