"""Query-view entropy maximisation over generated negatives (CausalNeg, DESIGN §1b), batched."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from causalneg.contracts import GENERATED_SOURCES, MINED_SOURCES, TAU_ENT
from causalneg.losses.distributed import all_reduce_sum, is_distributed, world
from causalneg.losses.infonce import check_inputs
from causalneg.losses.objective import RegularizerOutput
from causalneg.records import NegativeSource


@dataclass(frozen=True)
class EntropyTerms:
    """Per-query terms of the query-view entropy, shapes [B] unless noted (no autograd graph).

    ``loss`` = -H_gen + L_bal (0 for rows without generated negatives; callers still mask by ``has_gen``);
    ``grad_scores`` [B, K] = d loss / d s_k (zero outside G).
    """

    has_gen: Tensor
    n_gen: Tensor
    gen_mass: Tensor
    gen_mass_expected: Tensor
    h_gen: Tensor
    loss: Tensor
    grad_scores: Tensor


def entropy_terms(scores: Tensor, gen: Tensor, valid: Tensor) -> EntropyTerms:
    r"""Forward terms and their analytic gradient with respect to the scores, for all queries at once.

    With :math:`P = \mathrm{softmax}_A(s)` over the pool A = M ∪ G (``valid``), :math:`m = \sum_G P`,
    :math:`\tilde p = \mathrm{softmax}_G(s)`, :math:`H = -\sum_G \tilde p\log\tilde p`,
    :math:`e = N_g/(N_m+N_g)` and :math:`\ell = -H + (m-e)^2`, for :math:`k \in G`:
    :math:`\partial\ell/\partial s_k = \tilde p_k(\log\tilde p_k + H) + 2(m-e)P_k(1-m)`.
    Padding and non-generated slots are filled with ``finfo.min / 2`` (not -inf), so every row (even one
    with no valid or no generated negative) stays finite; such rows are excluded by ``has_gen``.

    Args: ``scores`` [B, K] float (already divided by τ), ``gen`` and ``valid`` [B, K] bool, ``gen ⊆ valid``
    (use :func:`query_view_terms`, which builds both from the sources, rather than calling this directly).
    """
    fill = torch.finfo(scores.dtype).min / 2
    not_gen, gen_f = ~gen, gen.to(scores.dtype)
    s_valid = scores.masked_fill(~valid, fill)
    lse_valid = s_valid.logsumexp(-1)  # [B]
    lse_gen = scores.masked_fill(not_gen, fill).logsumexp(-1)  # [B]
    log_pt = (scores - lse_gen[:, None]).masked_fill(not_gen, 0.0)  # log p~_k on G, 0 elsewhere
    pt = log_pt.exp() * gen_f  # p~ [B, K], 0 outside G
    h_gen = -(pt * log_pt).sum(-1)
    n_gen = gen.sum(-1)
    has_gen = n_gen > 0
    gen_mass = torch.where(has_gen, (lse_gen - lse_valid).exp(), 0.0)  # sum_G P (K = 0 would give nan)
    expected = n_gen.to(scores.dtype) / valid.sum(-1).clamp_min(1).to(scores.dtype)
    prob = (s_valid - lse_valid[:, None]).exp()  # P [B, K], 0 at padding
    dev = gen_mass - expected
    grad = pt * (log_pt + h_gen[:, None]) + (2 * dev * (1 - gen_mass))[:, None] * prob * gen_f
    return EntropyTerms(has_gen, n_gen, gen_mass, expected, h_gen, dev.square() - h_gen, grad)


def query_view_pool(neg_source: Tensor, neg_mask: Tensor, generated_codes: Tensor) -> tuple[Tensor, Tensor]:
    """G and the softmax pool M ∪ G as [B, K] bool masks, from the sources (never from slot positions).

    G: real slots whose source is in ``generated_codes``; M: real slots whose source is in
    :data:`~causalneg.contracts.MINED_SOURCES`. Other sources (random, in-batch, and generated sources that are
    not in ``generated_codes``) and padding are in neither.
    """
    gen = torch.isin(neg_source, generated_codes.to(neg_source.device)) & neg_mask
    mined = torch.zeros_like(neg_mask)
    for code in MINED_SOURCES:
        mined |= neg_source == int(code)
    return gen, gen | (mined & neg_mask)


def query_view_terms(
    q: Tensor, n: Tensor, neg_source: Tensor, neg_mask: Tensor, temperature: float, generated_codes: Tensor
) -> EntropyTerms:
    r"""The per-query query-view terms of DESIGN §1b; the one definition of the generated mass.

    :math:`s_j = \langle q, d_j\rangle/\tau_{ent}` for :math:`j \in M\cup G` (:func:`query_view_pool`),
    :math:`P = \mathrm{softmax}(s)` over M ∪ G, ``gen_mass`` = :math:`\sum_{k\in G} P_k`,
    ``gen_mass_expected`` = :math:`N_g/(N_m+N_g)`, ``h_gen`` = :math:`H_{gen}` (see :func:`entropy_terms`).
    The regularizer calls it on the batch, :func:`causalneg.diagnostics.shortcut.shortcut_diagnostics` on
    the held-out groups, so both report the same number for the same embeddings.

    Args:
        q: [B, D] query embeddings (L2-normalised; no gradient is taken here).
        n: [B, K, D] negative embeddings (L2-normalised), cast to ``q``'s dtype.
        neg_source: [B, K] long NegativeSource values. neg_mask: [B, K] bool, False = padding.
        temperature: τ_ent. generated_codes: [C] long, the sources that form G.
    """
    with torch.no_grad():
        gen, pool = query_view_pool(neg_source, neg_mask, generated_codes)
        scores = torch.einsum("bd,bkd->bk", q.detach(), n.detach().to(q.dtype)) / temperature
        return entropy_terms(scores, gen, pool)


def entropy_summary(terms: EntropyTerms) -> dict[str, Tensor]:
    r"""Batch means (0-dim tensors): ``gen_mass`` and ``gen_mass_expected`` over the queries with generated
    negatives; ``h_gen_normalized`` = mean :math:`H_{gen}/\log N_g` over those with :math:`N_g \ge 2`.
    A mean over an empty set is 0; callers that must tell it apart check ``terms.has_gen`` / ``terms.n_gen``.
    """
    rows = terms.has_gen.to(terms.gen_mass.dtype)
    multi = (terms.n_gen >= 2).to(rows.dtype)

    def mean(x: Tensor, w: Tensor) -> Tensor:
        return (x * w).sum() / w.sum().clamp_min(1)

    h_norm = terms.h_gen / terms.n_gen.clamp_min(2).to(rows.dtype).log()
    return {
        "gen_mass": mean(terms.gen_mass, rows),
        "gen_mass_expected": mean(terms.gen_mass_expected, rows),
        "h_gen_normalized": mean(h_norm, multi),
    }


class _GradToNegatives(torch.autograd.Function):
    """Returns ``value``; backward sends ``g * coef[b, k] * q[b]`` to ``n[b, k]``, nothing to q (a constant).

    This is the gradient of ``value = f(<sg(q), d_bk>)`` when ``coef = d value / d <q, d_bk>`` was computed
    analytically in the forward pass (by :func:`entropy_terms`), so no autograd graph of the ~20 small
    elementwise ops is recorded.
    """

    @staticmethod
    def forward(ctx: Any, value: Tensor, n: Tensor, q: Tensor, coef: Tensor) -> Tensor:
        ctx.save_for_backward(q, coef)
        ctx.n_dtype = n.dtype
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None, None]:
        q, coef = ctx.saved_tensors
        grad_n = (grad * coef).unsqueeze(-1) * q.unsqueeze(1)  # [B, K, D], zero outside G
        return None, grad_n.to(ctx.n_dtype), None, None


_GENERATED_NAMES = tuple(source.name.lower() for source in GENERATED_SOURCES)


class QueryViewEntropy(nn.Module):
    r"""Query-view entropy maximisation (CausalNeg, arXiv 2606.01304, DESIGN §1b).

    For each query with mined negatives M (valid negatives whose source is ``mined``) and generated
    negatives G (sources in ``generated_sources``; taken from ``neg_source``, never positions),
    :math:`N_m = |M|, N_g = |G|`; random and in-batch negatives are in neither and do not enter the softmax
    (they are far easier than both, and would pull the target share of G below what a source-blind query
    gives it). The pool and the generated mass are :func:`query_view_terms`, shared with the diagnostics:

    .. math::
        s_j = \langle \mathrm{sg}(q), d_j\rangle/\tau_{ent},\ j \in M\cup G;\quad
        P = \mathrm{softmax}(s);\quad \tilde p_k = P_k / \textstyle\sum_{G} P,\ k \in G

        H_{gen} = -\sum_{k\in G}\tilde p_k\log\tilde p_k;\quad
        L_{bal} = \Big(\sum_{k\in G} P_k - \frac{N_g}{N_m+N_g}\Big)^2;\quad
        L_{ent} = \frac{1}{|Q_G|}\sum_{q\in Q_G} \big(-H_{gen} + L_{bal}\big)

    where :math:`Q_G` are the queries with at least one generated negative. Maximising :math:`H_{gen}` spreads
    the query's attention evenly over its generated negatives; :math:`L_{bal}` keeps their total probability
    at their share of the negatives, so the encoder cannot separate negatives by origin (a source shortcut).
    The value is 0 (with a zero gradient path) when no query has a generated negative.

    Gradient: only the generated negatives' embeddings :math:`d_k, k\in G` receive gradient; the query and
    mined negatives enter through stop-gradient, and ``p`` is unused. The gradient is computed analytically
    in the forward pass (see :func:`entropy_terms`) and attached by a custom autograd function.

    Distributed: with ``normalize_across_devices`` (default) and a process group of W > 1 ranks, the
    denominator :math:`|Q_G|` is the global count divided by W (one scalar all-reduce), so DDP's gradient
    mean over ranks equals the single-process :math:`L_{ent}` on the concatenated batch even when ranks hold
    different numbers of queries with generated negatives. The call is then a collective: call it on every
    rank. The reference implementation divides the main loss by the world size, which silently rescales λ;
    this one does not scale anything by W.

    Shapes: ``q, p`` [B, D]; ``n`` [B, K, D]; ``neg_source`` [B, K] long (:class:`NegativeSource` values);
    ``neg_mask`` [B, K] bool (False = padding, ignored everywhere). Returns :class:`RegularizerOutput` with
    a scalar ``value`` and detached ``stats``: ``gen_mass`` (mean :math:`\sum_G P`) and ``gen_mass_expected``
    (mean :math:`N_g/(N_m+N_g)`) over :math:`Q_G`; ``h_gen_normalized`` (mean :math:`H_{gen}/\log N_g` over
    queries with :math:`N_g \ge 2`; 1 = uniform); ``frac_queries_with_generated``. A mean over an empty set is
    reported as 0 (keys never vary between steps or ranks, so they can be synced).
    """

    def __init__(
        self,
        temperature: float = TAU_ENT,
        generated_sources: Iterable[str | int] = _GENERATED_NAMES,
        normalize_across_devices: bool = True,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"QueryViewEntropy temperature must be > 0, got {temperature}")
        codes = sorted({int(NegativeSource.parse(s)) for s in generated_sources})
        if not codes:
            raise ValueError("QueryViewEntropy needs at least one generated source")
        self.temperature = float(temperature)
        self.normalize_across_devices = bool(normalize_across_devices)
        self.generated_sources = tuple(NegativeSource(c).name.lower() for c in codes)
        self.generated_codes: Tensor
        self.register_buffer("generated_codes", torch.tensor(codes, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, generated_sources={self.generated_sources}"

    def forward(
        self, q: Tensor, p: Tensor, n: Tensor, neg_source: Tensor, neg_mask: Tensor
    ) -> RegularizerOutput:
        check_inputs(q, p, n, neg_mask, neg_source)
        with torch.no_grad():
            q_c = q.detach().float() if q.dtype in (torch.float16, torch.bfloat16) else q.detach()
            terms = query_view_terms(q_c, n, neg_source, neg_mask, self.temperature, self.generated_codes)
            rows = terms.has_gen.to(q_c.dtype)
            denom = rows.sum()
            if self.normalize_across_devices and is_distributed():
                denom = all_reduce_sum(denom) / world()[1]
            denom = torch.where(denom > 0, denom, torch.ones_like(denom))
            value = (rows * terms.loss).sum() / denom
            coef = terms.grad_scores * (rows / (denom * self.temperature))[:, None]  # d value / d <q, d_k>
        if torch.is_grad_enabled() and n.requires_grad:
            value = _GradToNegatives.apply(value, n, q_c, coef)
        return RegularizerOutput(value=value, stats=_stats(terms, rows))


def _stats(terms: EntropyTerms, rows: Tensor) -> dict[str, Tensor]:
    """Batch statistics (detached): generated mass vs its expected share, normalised entropy, coverage."""
    frac = rows.mean() if rows.numel() else rows.new_zeros(())
    return {**entropy_summary(terms), "frac_queries_with_generated": frac}
