"""InfoNCE over a positive and per-query hard negatives, optionally with (cross-device) in-batch negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from causalneg.losses.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_max,
    gather_sizes,
    pad_dim1,
    world,
)
from causalneg.losses.masking import NO_KEY, PassageKeys, judged_positive_mask

MASKED_JUDGED = "masked/judged_positive"


def check_inputs(
    q: Tensor, p: Tensor, n: Tensor, neg_mask: Tensor | None, neg_source: Tensor | None = None
) -> None:
    """Raise ``ValueError`` naming the tensor unless ``q, p`` [B, D]; ``n`` [B, K, D]; masks [B, K]."""
    if q.dim() != 2 or p.shape != q.shape:
        raise ValueError(f"q and p must both be [B, D]; got q {tuple(q.shape)}, p {tuple(p.shape)}")
    if n.dim() != 3 or n.shape[0] != q.shape[0] or n.shape[2] != q.shape[1]:
        raise ValueError(f"n must be [B, K, D] = [{q.shape[0]}, K, {q.shape[1]}]; got {tuple(n.shape)}")
    for name, t in (("neg_mask", neg_mask), ("neg_source", neg_source)):
        if t is not None and t.shape != n.shape[:2]:
            raise ValueError(f"{name} must be [B, K] = {tuple(n.shape[:2])}; got {tuple(t.shape)}")
    if neg_mask is not None and neg_mask.dtype != torch.bool:
        raise ValueError(f"neg_mask must be a bool tensor (False = padding); got {neg_mask.dtype}")


def _as_loss_dtype(x: Tensor) -> Tensor:
    """Softmax statistics in at least float32 (bf16/fp16 logits lose the small differences that matter)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class InfoNCE(nn.Module):
    r"""Contrastive loss with temperature: cross-entropy of the positive among the query's candidates.

    For query :math:`i` with positive :math:`p_i` and hard negatives :math:`n_{ik}` (valid where
    ``neg_mask[i, k]``), all L2-normalised so dot products are cosines,

    .. math::
        \ell_i = -\log \frac{e^{q_i\cdot p_i/\tau}}
                             {e^{q_i\cdot p_i/\tau} + \sum_{c \in C_i} e^{q_i\cdot c/\tau}},
        \qquad L = \frac{1}{B}\sum_{i=1}^{B} \ell_i

    where :math:`C_i = \{n_{ik}\}` and, with ``in_batch_negatives``, also the positives :math:`p_j` and valid
    negatives :math:`n_{jk}` of every other query :math:`j` in the batch. :math:`\tau` is a temperature
    (logits are divided by it; sentence-transformers' ``scale`` is :math:`1/\tau`). Padding slots
    (``neg_mask`` False) get logit :math:`-\infty`: no probability mass and no gradient.

    False-negative masking (``mask_judged_positives``, needs ``keys``): a candidate whose passage the qrels
    judge relevant for query :math:`i` (score > 0), or that is a copy of :math:`p_i`, is removed from
    :math:`C_i` (logit :math:`-\infty`) instead of being pushed away: typically another query's positive
    that also answers :math:`i`, or :math:`p_i` itself as another query's positive. The label column
    :math:`p_i` is never masked. Passages are compared by their int64 keys (:mod:`causalneg.losses.masking`);
    generated text has no key and is never masked. :meth:`loss_and_stats` reports
    ``masked/judged_positive``: how many (query, candidate) pairs of this rank's queries were masked.

    Cross-device negatives: when ``in_batch_negatives`` and ``gather_across_devices`` are on and
    ``torch.distributed`` runs with world size :math:`W > 1`, every rank all-gathers the positives,
    negatives and masks of all ranks *with gradient*, so each local query sees the global batch, and
    :math:`L_r` is the mean over rank r's local queries only. The loss is deliberately **not** multiplied
    or divided by :math:`W`. Why this equals single-process training on the concatenated batch of
    :math:`WB` queries: the all-gather's backward sums the gradient over ranks, so rank r's embeddings
    receive :math:`\sum_{r'} \partial L_{r'}/\partial x_r` and its parameter gradient is
    :math:`\sum_{r'} \partial L_{r'}/\partial\theta|_{x_r}`; DDP then averages over ranks, giving
    :math:`\frac{1}{W}\sum_{r'} \partial L_{r'}/\partial\theta = \partial L/\partial\theta` with
    :math:`L = \frac{1}{WB}\sum_i \ell_i = \frac{1}{W}\sum_r L_r` (equal local batch sizes, as
    ``DistributedSampler`` gives). Scaling by :math:`W` (as the reference plugin does) would instead
    multiply the effective learning rate and every regularizer weight by :math:`W`. Without in-batch negatives
    each query's loss is local, nothing is gathered, and DDP's averaging gives the global mean directly.
    Ranks may carry different K (negatives are padded with masked slots before gathering).

    Shapes: ``q`` [B, D], ``p`` [B, D], ``n`` [B, K, D] (K may be 0), ``neg_mask`` [B, K] bool or None
    (all valid), ``keys`` a :class:`PassageKeys` (positive [B], negatives [B, K], judged [B, J]) or None
    (no masking). Returns a scalar. Gradient flows to ``q``, ``p`` and ``n`` (and, across devices, to other
    ranks' ``p`` and ``n`` through the gather). Reference: van den Oord et al. 2018 (CPC); Karpukhin et al.
    2020 (DPR, in-batch negatives).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        in_batch_negatives: bool = False,
        gather_across_devices: bool = True,
        mask_judged_positives: bool = True,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"InfoNCE temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.in_batch_negatives = bool(in_batch_negatives)
        self.gather_across_devices = bool(gather_across_devices)
        self.mask_judged_positives = bool(mask_judged_positives)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, in_batch_negatives={self.in_batch_negatives}, "
            f"gather_across_devices={self.gather_across_devices}, "
            f"mask_judged_positives={self.mask_judged_positives}"
        )

    def forward(
        self, q: Tensor, p: Tensor, n: Tensor, neg_mask: Tensor | None = None, keys: PassageKeys | None = None
    ) -> Tensor:
        return self.loss_and_stats(q, p, n, neg_mask, keys)[0]

    def loss_and_stats(
        self, q: Tensor, p: Tensor, n: Tensor, neg_mask: Tensor | None = None, keys: PassageKeys | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and detached stats: ``masked/judged_positive`` (a count) when masking is on and ``keys``
        are given, else none."""
        check_inputs(q, p, n, neg_mask)
        if neg_mask is None:
            neg_mask = torch.ones(n.shape[:2], dtype=torch.bool, device=n.device)
        if keys is not None:
            keys.check(*n.shape[:2])
        use = keys if self.mask_judged_positives else None
        if self.in_batch_negatives:
            logits, labels, masked = self._in_batch_logits(q, p, n, neg_mask, use)
        else:
            logits, labels, masked = self._own_logits(q, p, n, neg_mask, use)
        stats = {MASKED_JUDGED: masked.sum().detach()} if use is not None else {}
        return F.cross_entropy(logits, labels), stats

    def _own_logits(
        self, q: Tensor, p: Tensor, n: Tensor, mask: Tensor, keys: PassageKeys | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[B, 1+K]`` = [q·p, q·n_k] / τ with the positive at index 0, and the masked slots [B, K]."""
        pos = (q * p).sum(-1, keepdim=True)  # [B, 1]
        masked = torch.zeros_like(mask)
        if keys is not None:  # [B, K, J+1] is small: a query's own slots against its judged keys
            own = torch.cat([keys.judged, keys.positive[:, None]], dim=1)  # [B, J+1]
            hit = (keys.negatives[:, :, None] == own[:, None, :]).any(-1) & (keys.negatives != NO_KEY)
            masked = hit & mask
        neg = torch.einsum("bd,bkd->bk", q, n).masked_fill(~mask | masked, float("-inf"))  # [B, K]
        logits = _as_loss_dtype(torch.cat([pos, neg], dim=1)) / self.temperature
        return logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device), masked

    def _in_batch_logits(
        self, q: Tensor, p: Tensor, n: Tensor, mask: Tensor, keys: PassageKeys | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[B, N + N*K]`` against all N positives and all N*K negatives of the (global) batch, and
        the masked (query, candidate) pairs [B, N + N*K].

        Query i's own positive is column ``offset + i`` (its label); its own negatives are among the negative
        columns, so the candidate set is exactly {p_i} ∪ {n_ik} ∪ {p_j, n_jk : j ≠ i}, less judged positives.
        """
        rank, size = world()
        pos_key = neg_key = None
        if keys is not None:
            pos_key, neg_key = keys.positive, keys.negatives
        if self.gather_across_devices and size > 1:
            k_max = int(all_reduce_max(torch.tensor(n.shape[1], device=n.device)).item())
            n, mask = pad_dim1(n, k_max), pad_dim1(mask, k_max, False)
            sizes = gather_sizes(q.shape[0], q.device)
            cand = all_gather_with_grad(torch.cat([p.unsqueeze(1), n], dim=1), sizes)  # [N, 1+K, D]
            p_all, n_all = cand[:, 0], cand[:, 1:]
            mask_all = all_gather_no_grad(mask, sizes)  # [N, K]
            if pos_key is not None and neg_key is not None:
                pos_key = all_gather_no_grad(pos_key, sizes)  # [N]
                neg_key = all_gather_no_grad(pad_dim1(neg_key, k_max, NO_KEY), sizes)  # [N, K]
            offset = sum(sizes[:rank])
        else:
            p_all, n_all, mask_all, offset = p, n, mask, 0
        labels = torch.arange(q.shape[0], device=q.device) + offset
        valid = torch.cat([torch.ones_like(mask_all[:, 0]), mask_all.reshape(-1)])  # [N + N*K]
        masked = torch.zeros(q.shape[0], valid.shape[0], dtype=torch.bool, device=q.device)
        if keys is not None and pos_key is not None and neg_key is not None:
            candidates = torch.cat([pos_key, neg_key.reshape(-1)])  # [N + N*K]
            masked = judged_positive_mask(candidates, keys.judged, keys.positive) & valid[None, :]
            masked[torch.arange(q.shape[0], device=q.device), labels] = False
        sim_pos = q @ p_all.T  # [B, N]
        sim_neg = q @ n_all.reshape(-1, q.shape[1]).T  # [B, N*K]
        sim = torch.cat([sim_pos, sim_neg], dim=1).masked_fill(~valid[None, :] | masked, float("-inf"))
        logits = _as_loss_dtype(sim) / self.temperature  # [B, N + N*K]
        return logits, labels, masked
