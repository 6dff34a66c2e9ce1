"""Cross-device collectives for the losses: an all-gather that keeps gradients, and small no-grad helpers.

All functions are no-ops (identity / local values) when ``torch.distributed`` is not initialised or the world
has one process, so the losses call them unconditionally. They are collectives: every rank must call them in
the same order (as it does in a training step).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return world()[1] > 1


def all_reduce_sum(value: Tensor) -> Tensor:
    """Sum of ``value`` over ranks (no gradient). Returns a new tensor; the input is left untouched."""
    out = value.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(value: Tensor) -> Tensor:
    """Element-wise maximum of ``value`` over ranks (no gradient)."""
    out = value.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def gather_sizes(local_size: int, device: torch.device) -> list[int]:
    """Dim-0 sizes of every rank's tensor, in rank order (``[local_size]`` when not distributed)."""
    _, size = world()
    if size == 1:
        return [local_size]
    mine = torch.tensor([local_size], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(size)]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


class _AllGatherSumGrad(torch.autograd.Function):
    """All-gather of equal-shape tensors along dim 0 whose backward sums the gradients over ranks.

    Forward: ``x_r [n, *S]`` on rank r -> ``cat_r x_r [W*n, *S]`` on every rank.
    Backward: rank r receives ``sum_r' dL_r'/d(gathered)`` restricted to its own slice, i.e. the gradient of
    the *sum* of all ranks' losses with respect to its input. An all-reduce (not reduce-scatter) is used so
    the same code runs on gloo and NCCL; the gathered tensors are small (embeddings, not activations).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        chunks = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks, dim=0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """Zero-pad dim 0 of ``x`` to ``rows`` (differentiable; the padding gets no gradient)."""
    if x.shape[0] == rows:
        return x
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def all_gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, keeping the autograd graph to every rank's input.

    Args:
        x: ``[n_r, *S]`` on rank r; ``n_r`` may differ between ranks, ``S`` may not.
        sizes: every rank's ``n_r`` if already known (from :func:`gather_sizes`), to save a collective.

    Returns:
        ``[sum_r n_r, *S]`` in rank order; rank r's own rows are at offset ``sum(sizes[:r])``.

    Gradient: the backward all-reduces (sums) the gradient of the gathered tensor, so each rank's input gets
    the gradient of the sum of all ranks' losses. Under DDP, whose gradient averaging divides that sum by the
    world size, the parameter gradient equals that of the mean of the per-rank losses, i.e. single-process
    training on the concatenated batch when local batches have equal size (see ``InfoNCE``).
    """
    if not is_distributed():
        return x
    sizes = gather_sizes(x.shape[0], x.device) if sizes is None else sizes
    rows = max(sizes)
    gathered = _AllGatherSumGrad.apply(_pad_rows(x, rows))
    if all(s == rows for s in sizes):
        return gathered
    return torch.cat([gathered[r * rows : r * rows + s] for r, s in enumerate(sizes)], dim=0)


def all_gather_no_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Like :func:`all_gather_with_grad` for tensors that need no gradient (masks, labels, integer codes)."""
    if not is_distributed():
        return x
    sizes = gather_sizes(x.shape[0], x.device) if sizes is None else sizes
    rows = max(sizes)
    chunks = [x.new_empty((rows, *x.shape[1:])) for _ in sizes]
    dist.all_gather(chunks, _pad_rows(x.detach(), rows).contiguous())
    return torch.cat([c[:s] for c, s in zip(chunks, sizes, strict=True)], dim=0)


def pad_dim1(x: Tensor, size: int, value: float | bool = 0) -> Tensor:
    """Pad dim 1 of ``x`` ``[B, K, ...]`` at the end to ``size`` with ``value`` (differentiable)."""
    extra = size - x.shape[1]
    if extra == 0:
        return x
    if extra < 0:
        raise ValueError(f"cannot pad dim 1 of size {x.shape[1]} down to {size}")
    if x.dtype == torch.bool:
        return torch.cat([x, x.new_full((x.shape[0], extra, *x.shape[2:]), bool(value))], dim=1)
    pad = [0, 0] * (x.dim() - 2) + [0, extra]  # F.pad lists the last dim first
    return F.pad(x, pad, value=float(value))
