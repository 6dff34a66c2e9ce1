"""How a training batch's texts are cut into forward chunks: shared by the plain step and by gradient caching.

Both paths encode the same chunks in the same order, so with the same RNG state they draw the same dropout masks:
that is what makes a GradCache step equal to the plain step (tests/integration/test_grad_cache.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from causalneg.models.encoder import DualEncoder, Side


def length_chunks(lengths: Tensor, max_tokens: int | None, max_rows: int | None = None) -> list[Tensor]:
    """Row indices sorted by length (longest first, stable), cut so that ``rows * longest <= max_tokens`` and
    ``rows <= max_rows`` (each limit ignored when None; a chunk holds at least one row)."""
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    chunks, start = [], 0
    while start < len(sorted_lengths):
        rows = len(sorted_lengths)
        if max_tokens is not None:
            rows = max(1, max_tokens // max(1, int(sorted_lengths[start])))
        if max_rows is not None:
            rows = max(1, min(rows, max_rows))
        chunks.append(order[start : start + rows])
        start += rows
    return chunks


@dataclass(frozen=True)
class ChunkPlan:
    """The forward chunks of one side's texts ``[N, T]``.

    ``ids, mask`` [U, T]: the rows to encode; ``chunks``: per chunk, its row indices [R] into U and its column
    span; ``gather`` [N]: text n's embedding is row ``gather[n]`` of the chunk outputs concatenated in order.
    """

    ids: Tensor
    mask: Tensor
    chunks: tuple[tuple[Tensor, slice], ...]
    gather: Tensor

    def inputs(self, index: int) -> tuple[Tensor, Tensor]:
        """``input_ids, attention_mask`` [R, T'] of chunk ``index``, trimmed to its own columns."""
        rows, span = self.chunks[index]
        return self.ids[rows, span], self.mask[rows, span]

    def assemble(self, parts: Sequence[Tensor]) -> Tensor:
        """Chunk outputs [R_c, D] (in chunk order) -> ``[N, D]`` in the texts' order (a differentiable gather)."""
        return torch.cat(list(parts))[self.gather]


def plan_chunks(
    input_ids: Tensor, attention_mask: Tensor, max_tokens: int | None, max_rows: int | None = None
) -> ChunkPlan:
    """Plan the chunks of ``input_ids, attention_mask [N, T]``.

    With a limit (``max_tokens`` padded positions and/or ``max_rows`` texts per chunk), identical rows are
    encoded once (their gradients add up through the gather); the distinct rows are sorted by length and cut
    by :func:`length_chunks`, and each chunk is trimmed to the columns its own texts occupy (right or left
    padding alike). Padding is masked out of attention and pooling, so trimming it changes no result. Without
    a limit (or with no rows) the batch is one chunk, as given.
    """
    n, width = input_ids.shape
    if (max_tokens is None and max_rows is None) or n == 0:
        every = torch.arange(n, device=input_ids.device)
        return ChunkPlan(input_ids, attention_mask, ((every, slice(None)),), every)
    rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)  # [N, 2T]
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)  # [U, 2T], [N]
    ids, mask = unique[:, :width], unique[:, width:].to(attention_mask.dtype)
    chunks, order = [], []
    for chunk in length_chunks(mask.sum(dim=1), max_tokens, max_rows):
        columns = mask[chunk].any(dim=0).nonzero().flatten()  # occupied columns: contiguous on either side
        span = slice(int(columns[0]), int(columns[-1]) + 1) if columns.numel() else slice(0, 1)
        chunks.append((chunk, span))
        order.append(chunk)
    position = torch.empty(unique.shape[0], dtype=torch.long, device=input_ids.device)
    position[torch.cat(order)] = torch.arange(unique.shape[0], device=input_ids.device)
    return ChunkPlan(ids, mask, tuple(chunks), position[inverse])


def encode_bucketed(
    encoder: DualEncoder, input_ids: Tensor, attention_mask: Tensor, side: Side, max_tokens: int | None
) -> Tensor:
    """``input_ids, attention_mask [N, T]`` -> ``[N, D]``: what ``encoder.encode`` returns (up to float
    rounding), at a fraction of the compute: the chunks of :func:`plan_chunks` (``max_tokens=None`` encodes
    the batch as given)."""
    if max_tokens is None or input_ids.shape[0] == 0:
        return encoder.encode(input_ids, attention_mask, side)
    plan = plan_chunks(input_ids, attention_mask, max_tokens)
    return plan.assemble([encoder.encode(*plan.inputs(i), side) for i in range(len(plan.chunks))])
