"""The full source-shortcut diagnostic set (DESIGN §1c) computed from embedded held-out training groups.

Inputs are the encoder's embeddings of G groups with K negative slots each: query ``q`` [G, D], positive
``p`` [G, D], negatives ``n`` [G, K, D], the source of each negative ``neg_source`` [G, K]
(:class:`causalneg.records.NegativeSource` values) and ``neg_mask`` [G, K] (True = real negative, False =
padding). Embeddings are L2-normalised here, so every similarity is a cosine.

Z = 1 for generated negatives (GENERATED, NAIVE_GENERATED), Z = 0 for MINED; other sources (random,
in-batch) are left out of the Z-based metrics but still appear in the per-source histograms.
S = cos(q, n). Metrics (nats for MI, logged by the callback as ``diag/<key>``):

Each row g is one query; the negatives of a row are grouped by it (pass ``query_ids`` when two rows can hold
the same query), because the negatives of one query share its topic, its similarity level and its share of
generated negatives, none of which is a source shortcut:

- ``mi_knn``, ``mi_binned``: I(Z; S) over all pooled negatives by the two estimators of
  :mod:`.mutual_information`; ``mi_knn_perm_mean`` / ``mi_knn_perm_p95`` (alias ``mi_perm_p95``) and
  ``mi_binned_perm_mean`` / ``mi_binned_perm_p95``: the same estimators with Z shuffled *within each query*
  (the noise floor under "no within-query dependence"; a pooled shuffle would also remove the between-query
  part of I(Z; S) and flag it as signal). ``mi > perm_p95`` is a one-sided test at the 5 % level.
- ``probe_auc_blind``: cross-validated AUC of a linear probe predicting Z from the negative embedding alone,
  folds grouped by query (scored on queries it was not fitted on);
  ``probe_auc_sim``: AUC of S as a score for Z over same-query (generated, mined) pairs (:mod:`.probes`).
- ``gen_mass``: mean over groups with generated negatives of ``Σ_{k∈G} softmax_k(cos(q, n)/τ_ent)``, the
  softmax taken over that group's mined ∪ generated negatives; ``gen_mass_expected``: mean of
  ``Ng / (Nm + Ng)`` over the same groups (the mass if the query were blind to the source).
  ``gen_mass < gen_mass_expected`` means generated negatives are easier than mined ones. Computed by the
  regularizer's own function (:func:`causalneg.losses.query_view_entropy.query_view_terms`, DESIGN §1b) with
  τ_ent = :data:`causalneg.contracts.TAU_ENT` by default, so it is the number the regularizer's
  ``reg/.../gen_mass`` reports for the same embeddings.
- ``h_gen_norm``: mean of ``H_gen / log Ng`` over groups with ``Ng >= 2``, where
  ``H_gen = −Σ_{k∈G} p̃_k log p̃_k`` and ``p̃_k = p_k / Σ_{k∈G} p_k`` (1 = the query spreads its attention
  evenly over its generated negatives, 0 = it looks at one only).
- ``n_mined``, ``n_generated``, ``n_groups``: counts behind the estimates.

Every value in ``metrics`` is finite: a metric that cannot be computed (no generated or no mined negatives,
too few for the probe's folds, no group with two generated negatives) is left out and ``skipped`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from causalneg.contracts import GENERATED_SOURCES, MINED_SOURCES, TAU_ENT
from causalneg.diagnostics.mutual_information import mi_binned, mi_knn, permutation_baseline
from causalneg.diagnostics.probes import group_codes, probe_auc_blind, probe_auc_similarity
from causalneg.losses.query_view_entropy import entropy_summary, query_view_terms


@dataclass
class ShortcutReport:
    """Diagnostic metrics plus the per-negative arrays the plots need.

    ``similarity``, ``margin`` and ``source`` are [N] over every real (unmasked) negative:
    ``similarity = cos(q, n)``, ``margin = cos(q, p) − cos(q, n)``, ``source`` = NegativeSource value.
    """

    metrics: dict[str, float]
    similarity: NDArray[np.float64]
    margin: NDArray[np.float64]
    source: NDArray[np.int64]
    skipped: list[str] = field(default_factory=list)


def to_numpy(x: Any, dtype: type = np.float64) -> NDArray[Any]:
    """A torch tensor (any device or dtype, bf16 included) or array-like as a numpy array of ``dtype``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() and x.element_size() < 4 else x  # numpy has no bf16
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _normalise(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """L2-normalise the last axis; all-zero rows (padding) stay zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _check_shapes(
    q: NDArray[Any], p: NDArray[Any], n: NDArray[Any], src: NDArray[Any], mask: NDArray[Any]
) -> None:
    if q.ndim != 2 or p.shape != q.shape:
        raise ValueError(f"q and p must both be [G, D], got {q.shape} and {p.shape}")
    g, d = q.shape
    if n.ndim != 3 or n.shape[0] != g or n.shape[2] != d:
        raise ValueError(f"n must be [G, K, D] = [{g}, K, {d}], got {n.shape}")
    if src.shape != n.shape[:2] or mask.shape != n.shape[:2]:
        raise ValueError(
            f"neg_source and neg_mask must be [G, K] = {n.shape[:2]}, got {src.shape}, {mask.shape}"
        )


def entropy_metrics(
    q: NDArray[np.float64],
    n: NDArray[np.float64],
    src: NDArray[np.int64],
    mask: NDArray[np.bool_],
    temperature_ent: float,
) -> dict[str, float]:
    """``gen_mass``, ``gen_mass_expected`` and ``h_gen_norm`` (see module docstring), computed by the
    regularizer's own :func:`~causalneg.losses.query_view_entropy.query_view_terms` (in float64), so the
    pool M ∪ G, the mass and the expected share are the training objective's definitions.

    Args:
        q: [G, D] and n: [G, K, D] L2-normalised embeddings; src: [G, K] sources; mask: [G, K] real slots.
        temperature_ent: τ_ent of the softmax.
    Returns:
        Only the metrics that have at least one contributing group.
    """
    codes = torch.tensor([int(c) for c in GENERATED_SOURCES], dtype=torch.long)
    terms = query_view_terms(
        torch.from_numpy(q), torch.from_numpy(n), torch.from_numpy(src), torch.from_numpy(mask),
        temperature_ent, codes,
    )  # fmt: skip
    if not bool(terms.has_gen.any()):
        return {}
    summary = {k: float(v) for k, v in entropy_summary(terms).items()}
    out = {"gen_mass": summary["gen_mass"], "gen_mass_expected": summary["gen_mass_expected"]}
    if bool((terms.n_gen >= 2).any()):
        out["h_gen_norm"] = summary["h_gen_normalized"]
    return out


def dependence_metrics(
    z: NDArray[np.int64],
    s: NDArray[np.float64],
    emb: NDArray[np.float64],
    groups: NDArray[np.int64],
    n_permutations: int,
    seed: int,
) -> dict[str, float]:
    """MI estimates, their permutation baselines and both probe AUCs.

    Args:
        z: [N] source labels (1 = generated). s: [N] similarities. emb: [N, D] negative embeddings.
        groups: [N] query of each negative: the permutations shuffle Z within each query, and the probes
            never split a query across folds or compare negatives of different queries.
    """
    knn = partial(mi_knn, seed=seed)
    knn_mean, knn_p95 = permutation_baseline(knn, z, s, n_permutations, seed, groups=groups)
    bin_mean, bin_p95 = permutation_baseline(mi_binned, z, s, n_permutations, seed, groups=groups)
    return {
        "mi_knn": knn(z, s),
        "mi_binned": mi_binned(z, s),
        "mi_knn_perm_mean": knn_mean,
        "mi_knn_perm_p95": knn_p95,
        "mi_perm_p95": knn_p95,
        "mi_binned_perm_mean": bin_mean,
        "mi_binned_perm_p95": bin_p95,
        "probe_auc_blind": probe_auc_blind(emb, z, groups, seed=seed),
        "probe_auc_sim": probe_auc_similarity(s, z, groups),
    }


def shortcut_diagnostics(
    q: Any,
    p: Any,
    n: Any,
    neg_source: Any,
    neg_mask: Any,
    temperature_ent: float = TAU_ENT,
    n_permutations: int = 20,
    seed: int = 0,
    query_ids: Any = None,
) -> ShortcutReport:
    """Compute every source-shortcut diagnostic for G embedded groups (torch tensors or numpy arrays).

    Args:
        q: [G, D] query embeddings.
        p: [G, D] positive embeddings.
        n: [G, K, D] negative embeddings (padding slots arbitrary).
        neg_source: [G, K] integer NegativeSource values.
        neg_mask: [G, K] bool, True where the slot holds a real negative.
        temperature_ent: τ_ent for ``gen_mass`` and ``h_gen_norm`` (default: the regularizer's,
            :data:`causalneg.contracts.TAU_ENT`).
        n_permutations: shuffles for each permutation baseline.
        seed: seeds the k-NN jitter, the permutations and the probe's folds.
        query_ids: [G] query id of each row (a sequence or array of hashables), or None; rows with the same
            id form one group for the within-query permutations and the probes. Default: every row is its
            own query (one group per query, as the datamodule's diagnostic loader yields them).
    """
    q_, p_, n_ = (_normalise(to_numpy(x)) for x in (q, p, n))
    src = to_numpy(neg_source, np.int64)
    mask = to_numpy(neg_mask, np.bool_)
    _check_shapes(q_, p_, n_, src, mask)
    row_query = np.arange(q_.shape[0]) if query_ids is None else group_codes(query_ids, q_.shape[0])
    sim = np.einsum("gd,gkd->gk", q_, n_)  # [G, K]
    margin = np.einsum("gd,gd->g", q_, p_)[:, None] - sim  # [G, K]
    is_gen = mask & np.isin(src, [int(c) for c in GENERATED_SOURCES])
    is_mined = mask & np.isin(src, [int(c) for c in MINED_SOURCES])
    metrics: dict[str, float] = {
        "n_groups": float(q_.shape[0]),
        "n_mined": float(is_mined.sum()),
        "n_generated": float(is_gen.sum()),
    }
    skipped: list[str] = []
    if is_gen.any() and is_mined.any():
        pool = is_gen | is_mined
        slot_query = np.broadcast_to(row_query[:, None], pool.shape)  # [G, K] query of each slot
        dep = dependence_metrics(
            is_gen[pool].astype(np.int64), sim[pool], n_[pool], slot_query[pool], n_permutations, seed
        )
        metrics.update(dep)
    else:
        missing = "generated" if not is_gen.any() else "mined"
        skipped.append(f"MI and probe metrics: no {missing} negatives among the held-out groups")
    metrics.update(entropy_metrics(q_, n_, src, mask, temperature_ent))
    if is_gen.any() and "h_gen_norm" not in metrics:
        skipped.append("h_gen_norm: no group has two or more generated negatives")
    for key in [k for k, v in metrics.items() if not np.isfinite(v)]:
        skipped.append(
            f"{key}: not computable on this sample (e.g. too few queries per class for the probe's folds)"
        )
        del metrics[key]
    return ShortcutReport(
        metrics=metrics, similarity=sim[mask], margin=margin[mask], source=src[mask], skipped=skipped
    )
