r"""Gradient caching (GradCache: Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup"; the technique of sentence-transformers' ``CachedMultipleNegativesRankingLoss``).

A contrastive loss couples every text of the batch, so the batch cannot simply be split. GradCache splits the
*encoder* instead. With chunk embeddings :math:`E_c = f_\theta(x_c)` and a loss :math:`L(E_1, \dots, E_C)`
(InfoNCE plus regularizers, on the whole batch):

1. encode every chunk without an autograd graph, saving the RNG state before each chunk;
2. compute :math:`L` on the full-batch embeddings (leaves) and cache :math:`g_c = \partial L/\partial E_c`;
3. when the outer backward reaches the returned loss with gradient :math:`s` (1, the fp16 loss scale, or
   1/accumulation), re-encode each chunk *with* a graph under its saved RNG state (so dropout draws the same
   masks) and the same autocast state, and backpropagate :math:`s\,g_c` into it:

.. math::
    \nabla_\theta (sL) = s \sum_c \Big(\frac{\partial E_c}{\partial \theta}\Big)^{\top} g_c .

Peak memory is one chunk's activations plus the embeddings and the loss graph; compute is about one extra
forward. The result equals the plain step up to float rounding when the plain step encodes the same chunks in
the same order (:mod:`causalneg.training.chunking`). Step 3 runs inside a backward hook of the returned loss
(as sentence-transformers does), so Lightning's automatic optimization (accumulation, clipping, precision
plugins) works unchanged. Single process only: a DDP reducer would see one backward per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor

from causalneg.models.encoder import Side
from causalneg.training.chunking import ChunkPlan

Extra = TypeVar("Extra")
Encode = Callable[[Tensor, Tensor, Side], Tensor]  # (input_ids, attention_mask, side) -> [R, D]


class RngState:
    """The CPU RNG state and, for a CUDA ``device``, that device's, as they were at construction."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_devices: list[int] = []
        self.cuda_states: list[Tensor] = []
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.cuda_devices, self.cuda_states = [index], [torch.cuda.get_rng_state(index)]

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the saved state; the RNG state outside the block is left as it was."""
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            for index, state in zip(self.cuda_devices, self.cuda_states, strict=True):
                torch.cuda.set_rng_state(state, index)
            yield


class AutocastState:
    """Whether autocast was on for ``device_type`` at construction, and its dtype (the backward hook runs
    outside the forward's autocast context, so the re-encode must enter it again)."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type)

    def replay(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def grad_cache_loss(
    encode: Encode,
    sides: Sequence[tuple[ChunkPlan, Side]],
    loss_fn: Callable[[list[Tensor]], tuple[Tensor, Extra]],
) -> tuple[Tensor, Extra]:
    """Steps 1-2 of the module docstring now; step 3 when the returned loss is backpropagated.

    ``sides``: the chunk plan of each side (e.g. queries, documents); ``loss_fn`` gets one ``[N_s, D]``
    embedding tensor per side (assembled from the cached chunk embeddings, which are leaves) and returns the
    scalar loss and anything else (e.g. the objective's named parts), passed through. Returns the loss as a
    detached leaf that requires grad, with the replay hook on it, and the extra. Call ``backward`` on it (or
    on a scaled copy) exactly once.
    """
    device = sides[0][0].ids.device
    autocast = AutocastState(device.type)
    chunks = [(plan, side, i) for plan, side in sides for i in range(len(plan.chunks))]
    states: list[RngState] = []
    leaves: list[Tensor] = []
    with torch.no_grad():
        for plan, side, i in chunks:
            states.append(RngState(device))
            leaves.append(encode(*plan.inputs(i), side).detach().requires_grad_(True))
    embeddings, start = [], 0
    for plan, _ in sides:
        embeddings.append(plan.assemble(leaves[start : start + len(plan.chunks)]))
        start += len(plan.chunks)
    loss, extra = loss_fn(embeddings)
    found = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, found, strict=True)]

    def replay(grad_output: Tensor) -> None:
        with torch.enable_grad():
            for (plan, side, i), state, grad in zip(chunks, states, grads, strict=True):
                with state.replay(), autocast.replay():
                    emb = encode(*plan.inputs(i), side)  # [R, D], the same dropout masks as step 1
                emb.backward(grad.to(emb.dtype) * grad_output.to(emb.dtype))  # frees this chunk's graph

    cached = loss.detach().requires_grad_(True)
    cached.register_hook(replay)
    return cached, extra
