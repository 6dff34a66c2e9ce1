"""InfoNCE over a positive and per-query hard negatives, optionally with (cross-device) in-batch negatives."""

from __future__ import annotations

from dataclasses import dataclass

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
MASKED_GUIDE = "masked/guide"


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

    Several positives (``pos_slot``, ``data.positives=multi``): slots of :math:`n_i` flagged in ``pos_slot`` hold
    further positives :math:`P_i \setminus \{p_i\}` of query :math:`i`. Each positive is scored against the
    negatives alone (the other positives leave its denominator), and the query's loss is their mean,

    .. math::
        \ell_i = \frac{1}{|P_i|}\sum_{p \in P_i} -\log \frac{e^{q_i\cdot p/\tau}}
                 {e^{q_i\cdot p/\tau} + \sum_{c \in C_i} e^{q_i\cdot c/\tau}}

    which is the plain :math:`\ell_i` when :math:`P_i = \{p_i\}`. Why the mean and not the sum of the
    positives in one numerator: the sum's gradient is spread over the positives by their own softmax weight, so
    a judged positive that the encoder already ranks low (the one retrieval misses) gets the least of it; the
    mean gives each positive the gradient of its own (query, positive) pair, as sentence-transformers' per-pair
    rows do, while the query keeps one row (one weight) in the batch however many positives it has. Other
    queries' extra positives are in-batch candidates like their negatives (masked when judged for :math:`i`).

    False-negative masking (``mask_judged_positives``, needs ``keys``): a candidate whose passage the qrels
    judge relevant for query :math:`i` (score > 0), or that is a copy of :math:`p_i`, is removed from
    :math:`C_i` (logit :math:`-\infty`) instead of being pushed away: typically another query's positive
    that also answers :math:`i`, or :math:`p_i` itself as another query's positive. The label column
    :math:`p_i` is never masked. Passages are compared by their int64 keys (:mod:`causalneg.losses.masking`);
    generated text has no key and is never masked. :meth:`loss_and_stats` reports
    ``masked/judged_positive``: how many (query, candidate) pairs of this rank's queries were masked.

    Guide-model masking (GISTEmbed, Solatorio 2024; ``guide_margin`` set, needs ``guide``): with embeddings
    :math:`\hat q, \hat c` of the same texts from a frozen guide encoder (the stock model), a candidate is
    also removed from :math:`C_i` when :math:`\hat q_i\cdot\hat c > \hat q_i\cdot\hat p_i - m`
    (sentence-transformers' ``GISTEmbedLoss`` "absolute" margin :math:`m`; 0 = anything the guide ranks above
    the positive). This catches unjudged relevant passages, at the risk of masking true hard negatives.
    ``masked/guide`` counts the pairs it masks beyond the judged ones.

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
    (all valid), ``pos_slot`` [B, K] bool or None (no extra positives; a flagged slot is valid whatever
    ``neg_mask`` says), ``keys`` a :class:`PassageKeys` (positive [B], negatives [B, K], judged [B, J]) or None
    (no masking), ``guide`` the guide's ``(q, p, n)`` of the same shapes, detached, or None. Returns a scalar.
    Gradient flows to ``q``, ``p`` and ``n`` (and, across devices, to other ranks' ``p`` and ``n`` through the
    gather); never to the guide's. References: van den Oord et al. 2018 (CPC); Karpukhin et al. 2020 (DPR,
    in-batch negatives); Solatorio 2024 (GISTEmbed, guided in-batch negative selection).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        in_batch_negatives: bool = False,
        gather_across_devices: bool = True,
        mask_judged_positives: bool = True,
        guide_margin: float | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"InfoNCE temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.in_batch_negatives = bool(in_batch_negatives)
        self.gather_across_devices = bool(gather_across_devices)
        self.mask_judged_positives = bool(mask_judged_positives)
        self.guide_margin = None if guide_margin is None else float(guide_margin)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, in_batch_negatives={self.in_batch_negatives}, "
            f"gather_across_devices={self.gather_across_devices}, "
            f"mask_judged_positives={self.mask_judged_positives}, guide_margin={self.guide_margin}"
        )

    def forward(
        self,
        q: Tensor,
        p: Tensor,
        n: Tensor,
        neg_mask: Tensor | None = None,
        keys: PassageKeys | None = None,
        guide: Guide | None = None,
        pos_slot: Tensor | None = None,
    ) -> Tensor:
        return self.loss_and_stats(q, p, n, neg_mask, keys, guide, pos_slot)[0]

    def loss_and_stats(
        self,
        q: Tensor,
        p: Tensor,
        n: Tensor,
        neg_mask: Tensor | None = None,
        keys: PassageKeys | None = None,
        guide: Guide | None = None,
        pos_slot: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and detached stats: ``masked/judged_positive`` (a count) when judged masking is on and
        ``keys`` are given; ``masked/guide`` when ``guide_margin`` is set and ``guide`` is given."""
        check_inputs(q, p, n, neg_mask)
        if pos_slot is not None and pos_slot.shape != n.shape[:2]:
            raise ValueError(f"pos_slot must be [B, K] = {tuple(n.shape[:2])}; got {tuple(pos_slot.shape)}")
        if neg_mask is None:
            neg_mask = torch.ones(n.shape[:2], dtype=torch.bool, device=n.device)
        if pos_slot is not None and pos_slot.dtype != torch.bool:
            raise ValueError(f"pos_slot must be a bool tensor; got {pos_slot.dtype}")
        if pos_slot is not None:
            neg_mask = neg_mask | pos_slot  # an extra positive is a real candidate column
        if keys is not None:
            keys.check(*n.shape[:2])
        if guide is not None:
            check_inputs(*guide, neg_mask)
        use_keys = keys if self.mask_judged_positives else None
        use_guide = guide if self.guide_margin is not None else None
        if self.in_batch_negatives:
            c = self._in_batch_candidates(q, p, n, neg_mask, use_keys, use_guide)
        else:
            c = self._own_candidates(q, p, n, neg_mask, use_keys, use_guide)
        rows = torch.arange(q.shape[0], device=q.device)
        label = torch.zeros_like(c.valid)
        label[rows, c.labels] = True
        if pos_slot is not None:  # the query's extra positives' columns: positives, never masked
            label[rows[:, None].expand_as(pos_slot)[pos_slot], c.own_slots[pos_slot]] = True
        judged = c.judged & c.valid & ~label if c.judged is not None else torch.zeros_like(c.valid)
        guided = torch.zeros_like(c.valid)
        if c.guide_sim is not None and self.guide_margin is not None:
            threshold = c.guide_sim[rows, c.labels] - self.guide_margin  # [B]
            guided = (c.guide_sim > threshold[:, None]) & c.valid & ~label & ~judged
        logits = (
            _as_loss_dtype(c.sim.masked_fill(~c.valid | judged | guided, float("-inf"))) / self.temperature
        )
        stats: dict[str, Tensor] = {}
        if use_keys is not None:
            stats[MASKED_JUDGED] = judged.sum().detach()
        if use_guide is not None:
            stats[MASKED_GUIDE] = guided.sum().detach()
        if pos_slot is None or not bool(pos_slot.any()):
            return F.cross_entropy(logits, c.labels), stats
        return multi_positive_loss(logits, label), stats

    def _own_candidates(
        self, q: Tensor, p: Tensor, n: Tensor, mask: Tensor, keys: PassageKeys | None, guide: Guide | None
    ) -> _Candidates:
        """Columns [p_i, n_i1..n_iK] per query ([B, 1+K]); the label is column 0."""
        sim = torch.cat([(q * p).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", q, n)], dim=1)
        column = torch.ones(q.shape[0], 1, dtype=torch.bool, device=q.device)  # the positive's, always valid
        valid = torch.cat([column, mask], dim=1)  # [B, 1+K]
        judged = None
        if keys is not None:  # [B, K, J+1] is small: a query's own slots against its judged keys
            own = torch.cat([keys.judged, keys.positive[:, None]], dim=1)  # [B, J+1]
            hit = (keys.negatives[:, :, None] == own[:, None, :]).any(-1) & (keys.negatives != NO_KEY)
            judged = torch.cat([~column, hit], dim=1)
        guide_sim = None
        if guide is not None:
            gq, gp, gn = (t.detach() for t in guide)
            guide_sim = torch.cat(
                [(gq * gp).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", gq, gn)], dim=1
            )
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        own = 1 + torch.arange(n.shape[1], device=q.device)[None, :].expand(q.shape[0], -1)  # [B, K]
        return _Candidates(sim, valid, labels, judged, guide_sim, own)

    def _in_batch_candidates(
        self, q: Tensor, p: Tensor, n: Tensor, mask: Tensor, keys: PassageKeys | None, guide: Guide | None
    ) -> _Candidates:
        """Columns: all N positives, then all N*K negatives of the (global) batch ([B, N + N*K]).

        Query i's own positive is column ``offset + i`` (its label); its own negatives are among the negative
        columns, so the candidate set is exactly {p_i} ∪ {n_ik} ∪ {p_j, n_jk : j ≠ i}, less masked ones.
        """
        rank, size = world()
        k_local = n.shape[1]  # before padding to the ranks' largest K
        pos_key, neg_key = (keys.positive, keys.negatives) if keys is not None else (None, None)
        g_p, g_n = (guide[1].detach(), guide[2].detach()) if guide is not None else (None, None)
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
            if g_p is not None and g_n is not None:
                g_p = all_gather_no_grad(g_p, sizes)  # [N, D]
                g_n = all_gather_no_grad(pad_dim1(g_n, k_max), sizes)  # [N, K, D]
            offset = sum(sizes[:rank])
        else:
            p_all, n_all, mask_all, offset = p, n, mask, 0
        d = q.shape[1]
        labels = torch.arange(q.shape[0], device=q.device) + offset
        every = torch.ones(p_all.shape[0], dtype=torch.bool, device=q.device)  # the N positives' columns
        valid = torch.cat([every, mask_all.reshape(-1)])[None, :]  # [1, N + N*K]
        valid = valid.expand(q.shape[0], -1)  # [B, N + N*K]
        sim = torch.cat([q @ p_all.T, q @ n_all.reshape(-1, d).T], dim=1)  # [B, N + N*K]
        judged = None
        if keys is not None and pos_key is not None and neg_key is not None:
            candidates = torch.cat([pos_key, neg_key.reshape(-1)])  # [N + N*K]
            judged = judged_positive_mask(candidates, keys.judged, keys.positive)
        guide_sim = None
        if guide is not None and g_p is not None and g_n is not None:
            gq = guide[0].detach()
            guide_sim = torch.cat([gq @ g_p.T, gq @ g_n.reshape(-1, d).T], dim=1)
        k_all = n_all.shape[1]  # query i's own slot k is column N + (offset + i) * K_all + k
        own = p_all.shape[0] + labels[:, None] * k_all + torch.arange(k_local, device=q.device)[None, :]
        return _Candidates(sim, valid, labels, judged, guide_sim, own)


Guide = tuple[Tensor, Tensor, Tensor]  # the guide encoder's (q [B, D], p [B, D], n [B, K, D]), detached


@dataclass(frozen=True)
class _Candidates:
    """Per query, its candidate columns: ``sim`` [B, C] (q·c, with gradient), ``valid`` [B, C] (False =
    padding), ``labels`` [B] (the positive's column), ``judged`` [B, C] or None (judged positives by key),
    ``guide_sim`` [B, C] or None (the guide's q̂·ĉ), ``own_slots`` [B, K] long (the column of each of the
    query's own slots)."""

    sim: Tensor
    valid: Tensor
    labels: Tensor
    judged: Tensor | None
    guide_sim: Tensor | None
    own_slots: Tensor


def multi_positive_loss(logits: Tensor, positive: Tensor) -> Tensor:
    r"""Mean over queries of the mean over each query's positives of :math:`-\log e^{s_p} / (e^{s_p} +
    \sum_{c} e^{s_c})`, with :math:`c` the columns that are neither positive nor masked.

    ``logits`` [B, C] (masked columns already :math:`-\infty`), ``positive`` [B, C] bool (at least one per
    row). Each term is :math:`\mathrm{logaddexp}(s_p, \mathrm{LSE}_c\, s_c) - s_p`; a row without a negative
    gives 0. Equals ``F.cross_entropy`` when each row has one positive.
    """
    negatives = logits.masked_fill(positive, float("-inf")).logsumexp(dim=1, keepdim=True)  # [B, 1]
    safe = logits.masked_fill(~positive, 0.0)  # no -inf arithmetic in the unused entries
    terms = (torch.logaddexp(safe, negatives.expand_as(safe)) - safe) * positive  # [B, C]
    return (terms.sum(dim=1) / positive.sum(dim=1)).mean()
