"""The training objective: InfoNCE plus weighted regularizers, returning named parts for logging."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from causalneg.errors import ConfigError
from causalneg.records import NegativeSource

if TYPE_CHECKING:
    from causalneg.losses.infonce import Guide, InfoNCE
    from causalneg.losses.masking import PassageKeys


@dataclass(frozen=True)
class RegularizerOutput:
    """A regularizer's scalar ``value`` (with its autograd graph) and detached batch ``stats`` for logging."""

    value: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Regularizer(Protocol):
    """What :class:`Objective` calls. Implementations are ``nn.Module``s (so buffers follow ``.to(device)``).

    Shapes: ``q, p`` [B, D]; ``n`` [B, K, D]; ``neg_source`` [B, K] long (:class:`NegativeSource` values);
    ``neg_mask`` [B, K] bool, False = padding, which must be ignored.
    """

    def forward(
        self, q: Tensor, p: Tensor, n: Tensor, neg_source: Tensor, neg_mask: Tensor
    ) -> RegularizerOutput:
        """Return the unweighted regularizer value and its stats (stat keys must not vary between calls)."""
        ...


@dataclass(frozen=True)
class ObjectiveOutput:
    """``loss``: the scalar to backpropagate. ``parts`` (detached): ``loss/infonce``, ``loss/reg/<name>``
    (unweighted value), ``loss/total``. ``stats`` (detached): ``reg/<name>/<stat>`` and InfoNCE's own
    (``masked/judged_positive``, ``masked/guide`` when false-negative masking runs)."""

    loss: Tensor
    parts: dict[str, Tensor]
    stats: dict[str, Tensor]


class Objective(nn.Module):
    r"""``L = InfoNCE(q, p, n) + Σ_r w_r · R_r(q, p, n, source, mask)``.

    ``keys`` (passage keys of the batch, :class:`causalneg.losses.masking.PassageKeys`) and ``guide`` (a guide
    encoder's embeddings of the same texts) go to InfoNCE only, for false-negative masking; the regularizers
    see a query's own negatives, which the data layer keeps free of its judged positives. ``pos_slot`` [B, K]
    (extra positives of multi-positive groups) goes to InfoNCE only: ``neg_mask`` is False there, so the
    regularizers see those slots as padding.

    A regularizer with weight 0 is still evaluated (its stats are diagnostics worth logging in every arm) but
    under ``torch.no_grad`` and left out of the sum, so the loss and every gradient are exactly those of plain
    InfoNCE. Regularizers run in insertion order; with several ranks each one must be called on every rank.
    """

    def __init__(
        self,
        infonce: InfoNCE,
        regularizers: Mapping[str, Regularizer] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        regularizers = dict(regularizers or {})
        weights = dict(weights or {})
        if set(weights) != set(regularizers):
            raise ConfigError(
                f"regularizer weights must name exactly the regularizers {sorted(regularizers)}; "
                f"got weights for {sorted(weights)}"
            )
        modules: dict[str, nn.Module] = {}
        for name, reg in regularizers.items():
            if not isinstance(reg, nn.Module):
                raise TypeError(f"regularizer '{name}' must be an nn.Module, got {type(reg).__name__}")
            modules[name] = reg
        self.infonce = infonce
        self.regularizers = nn.ModuleDict(modules)
        self.weights = {k: float(w) for k, w in weights.items()}

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

    def forward(
        self,
        q: Tensor,
        p: Tensor,
        n: Tensor,
        neg_source: Tensor,
        neg_mask: Tensor,
        keys: PassageKeys | None = None,
        guide: Guide | None = None,
        pos_slot: Tensor | None = None,
    ) -> ObjectiveOutput:
        main, infonce_stats = self.infonce.loss_and_stats(q, p, n, neg_mask, keys, guide, pos_slot)
        total = main
        parts = {"loss/infonce": main.detach()}
        stats: dict[str, Tensor] = dict(infonce_stats)
        for name, reg in self.regularizers.items():
            weight = self.weights[name]
            with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0.0):
                out: RegularizerOutput = reg(q, p, n, neg_source, neg_mask)
            if weight != 0.0:
                total = total + weight * out.value
            parts[f"loss/reg/{name}"] = out.value.detach()
            stats.update({f"reg/{name}/{k}": v.detach() for k, v in out.stats.items()})
        parts["loss/total"] = total.detach()
        return ObjectiveOutput(loss=total, parts=parts, stats=stats)


@torch.no_grad()
def per_source_similarity_stats(
    q: Tensor, p: Tensor, n: Tensor, neg_source: Tensor, neg_mask: Tensor
) -> dict[str, Tensor]:
    """Per source: mean ``sim/<source>`` = cos(q, neg) and ``margin/<source>`` = cos(q, p) − cos(q, neg).

    Only sources present among the valid (``neg_mask``) negatives of this batch get keys (so under DDP, log
    these without cross-rank sync); ``sim/positive`` = mean cos(q, p) is always present. Inputs as in
    :class:`Regularizer`, L2-normalised; returns detached scalars.
    """
    q, p, n = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (q, p, n))
    pos = (q * p).sum(-1)  # [B]
    sim = torch.einsum("bd,bkd->bk", q, n)  # [B, K]
    stats = {"sim/positive": pos.mean()}
    sources, sims = neg_source[neg_mask], sim[neg_mask]  # [V]
    margins = (pos[:, None] - sim)[neg_mask]  # [V]
    for code in torch.unique(sources).tolist():
        name = NegativeSource(int(code)).name.lower()
        sel = sources == code
        stats[f"sim/{name}"] = sims[sel].mean()
        stats[f"margin/{name}"] = margins[sel].mean()
    return stats


def build_objective(
    loss_cfg: Mapping[str, Any], regularizer_cfg: Mapping[str, Any] | None = None
) -> Objective:
    """Instantiate the objective from the resolved ``loss`` mapping and ``regularizer`` (name -> node, or None).

    ``loss.grad_cache`` configures how the training step computes the gradient, not the loss: it is left out
    here (see :func:`grad_cache_chunk_size`). Each regularizer node holds ``_target_``, ``weight`` (popped here,
    owned by :class:`Objective`) and the constructor's keyword arguments; a node set to null is skipped.
    """
    from hydra.utils import instantiate

    from causalneg.losses.infonce import InfoNCE

    infonce = instantiate({k: v for k, v in loss_cfg.items() if k != "grad_cache"})
    if not isinstance(infonce, InfoNCE):
        raise ConfigError(f"loss._target_ must build causalneg.losses.InfoNCE, got {type(infonce).__name__}")
    regularizers: dict[str, Regularizer] = {}
    weights: dict[str, float] = {}
    for name, node in (regularizer_cfg or {}).items():
        if node is None:
            continue
        if not isinstance(node, Mapping) or "_target_" not in node or "weight" not in node:
            raise ConfigError(
                f"regularizer.{name} must be a mapping with '_target_' and 'weight'; got {node!r}"
            )
        kwargs = dict(node)
        weights[name] = float(kwargs.pop("weight"))
        regularizers[name] = instantiate(kwargs)
    return Objective(infonce, regularizers, weights)


def grad_cache_chunk_size(loss_cfg: Any) -> int | None:
    """``loss.grad_cache.chunk_size``: texts per encoder chunk with gradient caching, or None (off; also when
    the key is absent). Must be an integer >= 1 when set."""
    node = loss_cfg.get("grad_cache") if loss_cfg is not None else None
    size = node.get("chunk_size") if node is not None else None
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"loss.grad_cache.chunk_size must be an integer >= 1 or null, got {size!r}")
    return size
