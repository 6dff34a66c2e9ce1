"""Fast encoding of many texts: length-bucketed batches, dynamic padding, optional bf16, on-disk cache.

Texts are tokenized once (unpadded), sorted by token length (longest first), cut into batches, each batch
padded only to its own longest text, encoded, and the vectors put back in input order. Sorting makes
neighbouring texts similar in length, so almost no compute is spent on padding (see :func:`padding_fraction`).
Under ``bf16`` the backbone runs in ``torch.autocast(device, dtype=bfloat16)``; pooling and normalisation stay
in float32 and the result is float32. bf16 pays off only where the CPU has native bf16 matrix units
(AVX512-BF16/AMX); on an AVX2-only CPU it is emulated and several times slower than float32.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from causalneg.evaluation.embedding_cache import EmbeddingCache, embedding_key, texts_fingerprint
from causalneg.models.encoder import DualEncoder, Side
from causalneg.precision import encode_device_type, resolve_precision

# Accepted precision names -> canonical name (the one used in cache keys); "auto" is resolved first.
PRECISIONS = {"32-true": "32-true", "32": "32-true", "fp32": "32-true", "bf16": "bf16", "bf16-mixed": "bf16"}


def canonical_precision(precision: str) -> str:
    """The cache-key name of ``precision``; ``auto`` resolves on this machine (:mod:`causalneg.precision`)."""
    precision = resolve_precision(precision, encode_device_type(), "encode")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast_context(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast on ``device`` for ``bf16``; a no-op for ``32-true``."""
    if canonical_precision(precision) == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def length_batches(lengths: Sequence[int], batch_size: int, bucketed: bool = True) -> list[list[int]]:
    """Index batches: in input order, or (``bucketed``) by length descending, ties by index (stable)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if bucketed else list(range(len(lengths)))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padded_slots(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Positions computed when each batch is padded to its longest member: ``sum_b |b| max_{i in b} L_i``."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)


def padding_fraction(lengths: Sequence[int], batch_size: int, bucketed: bool) -> float:
    """Share of computed positions that are padding: ``1 - sum_i L_i / padded_slots`` (0 for no texts)."""
    slots = padded_slots(lengths, length_batches(lengths, batch_size, bucketed))
    return 0.0 if slots == 0 else 1.0 - sum(lengths) / slots


@dataclass
class EncodeStats:
    """What an :func:`encode_texts_with_stats` call did (``padding_fraction``: padding/positions)."""

    n_texts: int
    n_batches: int
    tokens: int
    slots: int
    padding_fraction: float
    seconds: float
    precision: str
    bucketed: bool
    cache_hit: bool = False

    @property
    def texts_per_second(self) -> float:
        return self.n_texts / self.seconds if self.seconds > 0 else float("inf")


def _cache_key(
    encoder: DualEncoder, texts: Sequence[str], side: Side, precision: str
) -> tuple[str, dict[str, Any]]:
    return embedding_key(
        encoder.weights_fingerprint(),
        texts_fingerprint(texts),
        side,
        encoder.max_length(side),
        encoder.prefix(side),
        encoder.config.pooling,
        encoder.config.normalize,
        precision,
    )


def _encode_batches(
    encoder: DualEncoder,
    ids: list[list[int]],
    batches: list[list[int]],
    side: Side,
    precision: str,
    progress: bool,
) -> torch.Tensor:
    """Encode each index batch (padded to its longest); vectors go back to input order: ``[N, D]``."""
    device = next(encoder.parameters()).device
    modes = {module: module.training for module in encoder.modules()}
    encoder.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(ids), disable=not progress, desc=f"encode {side}", unit="text") as bar,
        ):
            out = torch.empty((len(ids), encoder.embedding_dim), dtype=torch.float32)
            for batch in batches:
                features = encoder.pad([ids[i] for i in batch])
                with autocast_context(precision, device):
                    vectors = encoder.encode(
                        features["input_ids"].to(device), features["attention_mask"].to(device), side
                    )
                out[torch.tensor(batch, dtype=torch.long)] = vectors.float().cpu()
                bar.update(len(batch))
        return out.clone()  # an ordinary tensor: inference tensors cannot enter autograd later
    finally:
        for module, training in modes.items():  # restore every submodule's own mode
            module.training = training


def encode_texts_with_stats(
    encoder: DualEncoder,
    texts: Sequence[str],
    side: Side,
    batch_size: int = 128,
    precision: str = "32-true",
    progress: bool = True,
    cache: EmbeddingCache | None = None,
    bucketed: bool = True,
) -> tuple[torch.Tensor, EncodeStats]:
    """Encode ``texts`` on ``side`` in eval mode under inference mode; returns (``[N, D]`` float32, stats).

    The result is an ordinary tensor (cloned out of inference mode), row ``i`` = ``texts[i]``. With ``cache``,
    a hit skips encoding entirely and a miss stores the result. Every submodule's train/eval mode is restored.
    """
    canonical = canonical_precision(precision)
    started = time.perf_counter()
    key, key_inputs = _cache_key(encoder, texts, side, canonical) if cache is not None else ("", {})
    if cache is not None:
        cached = cache.get(key)
        if cached is not None and cached.shape == (len(texts), encoder.embedding_dim):
            seconds = time.perf_counter() - started
            return cached, EncodeStats(len(texts), 0, 0, 0, 0.0, seconds, canonical, bucketed, cache_hit=True)
    ids = encoder.token_ids(texts, side)
    lengths = [len(seq) for seq in ids]
    batches = length_batches(lengths, batch_size, bucketed)
    embeddings = _encode_batches(encoder, ids, batches, side, canonical, progress)
    slots = padded_slots(lengths, batches)
    stats = EncodeStats(
        n_texts=len(texts),
        n_batches=len(batches),
        tokens=sum(lengths),
        slots=slots,
        padding_fraction=0.0 if slots == 0 else 1.0 - sum(lengths) / slots,
        seconds=time.perf_counter() - started,
        precision=canonical,
        bucketed=bucketed,
    )
    if cache is not None:
        cache.put(key, embeddings, key_inputs)
    return embeddings, stats


def encode_texts(
    encoder: DualEncoder,
    texts: Sequence[str],
    side: Side,
    batch_size: int = 128,
    precision: str = "32-true",
    progress: bool = True,
    cache: EmbeddingCache | None = None,
    bucketed: bool = True,
) -> torch.Tensor:
    """:func:`encode_texts_with_stats` without the stats: ``[N, D]`` float32 embeddings in input order."""
    embeddings, _ = encode_texts_with_stats(
        encoder, texts, side, batch_size, precision, progress, cache, bucketed
    )
    return embeddings
