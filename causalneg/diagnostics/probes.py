"""Source probes: can the negative's source Z (0 = mined, 1 = generated) be predicted, and from what?

- :func:`probe_auc_blind` (and its data-level wrapper :func:`blind_probe_auc`) -- *query-blind* probe: a
  linear classifier sees only the negative's embedding. A cross-validated ROC-AUC near 0.5 means the encoder
  does not separate the sources by style; near 1.0 means it does, whatever the query (a shortcut the
  contrastive loss can exploit).
- :func:`probe_auc_similarity` -- the query-negative similarity S itself used as a score for Z, compared
  within each query. AUC > 0.5: generated negatives score higher than their query's mined ones (harder);
  < 0.5: lower (easier, the shortcut that makes them useless as negatives). ``|AUC − 0.5|`` is the effect
  size; ``I(Z; S)`` measures the same dependence in nats.

Why both are grouped by query: the negatives of one query are not independent samples. They share the
query's topic (a region of embedding space) and its similarity level, and each query has its own share of
generated negatives. A probe whose train and test folds both hold negatives of the same query can learn
"this topic is mostly generated" and be scored on the same topic, so it reports a source signal that no new
query would show (on data with no signal shared across queries, per-negative folds scored AUC 0.39-0.57).
The blind probe therefore uses folds that keep each query's negatives together (``StratifiedGroupKFold``):
it is scored only on queries it never saw. The similarity probe fits nothing, but the same confound enters
through the pooled ranking (a query with high similarities and many generated negatives makes "generated"
look "harder"), so it compares a generated negative only with mined negatives of the same query.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


def group_codes(groups: ArrayLike | Sequence[Any], n: int) -> NDArray[np.int64]:
    """Integer codes [n] for the query id (any hashable, e.g. str or int) of each of ``n`` samples."""
    g = np.asarray(groups).reshape(-1)
    if g.shape[0] != n:
        raise ValueError(f"groups must give the query id of every sample: expected {n}, got {g.shape[0]}")
    _, codes = np.unique(g, return_inverse=True)
    return codes.astype(np.int64).reshape(-1)


def _binary_labels(labels: ArrayLike) -> NDArray[np.int64]:
    z = np.asarray(labels).reshape(-1).astype(np.int64)
    if z.size and (z.min() < 0 or z.max() > 1):
        raise ValueError("labels must be 0 (mined) or 1 (generated)")
    return z


def probe_auc_blind(
    neg_embeddings: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike | Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    c: float = 1.0,
) -> float:
    """Mean held-out ROC-AUC of a logistic regression predicting Z from the embedding, folds grouped by query.

    The classifier is ``StandardScaler → LogisticRegression(C=c)`` (L2-regularised, lbfgs), fitted on
    ``folds − 1`` folds and scored on the held-out one. Folds come from ``StratifiedGroupKFold`` shuffled with
    ``seed``: every query's negatives fall in one fold (so the score is for queries the probe never saw),
    and the folds' class balance is kept as close to the whole set's as the groups allow. A held-out fold
    with a single class has no AUC and is left out of the mean.

    Args:
        neg_embeddings: [N, D] negative embeddings.
        labels: [N] binary source labels Z.
        groups: [N] the query id of every negative (any hashable values).
        folds: number of cross-validation folds (>= 2).
        seed: seeds the fold assignment.
        c: inverse L2 strength of the logistic regression.
    Returns:
        The mean AUC, or NaN when there is no valid split: either class occurs in fewer than ``folds``
        queries, or no held-out fold holds both classes.
    """
    x = np.asarray(neg_embeddings, dtype=np.float64)
    z = _binary_labels(labels)
    if x.ndim != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"neg_embeddings must be [N, D] with N = len(labels), got {x.shape} and {z.shape}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    g = group_codes(groups, z.shape[0])
    if min(np.unique(g[z == cls]).size for cls in (0, 1)) < folds:
        return float("nan")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    aucs = []
    # One BLAS thread: the problem is small, and more threads oversubscribe the cores the trainer is using.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        # A probe that has not fully converged still gives a valid (if conservative) held-out AUC.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        for train, test in splitter.split(x, z, groups=g):
            if np.unique(z[test]).size < 2 or np.unique(z[train]).size < 2:
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=200))
            model.fit(x[train], z[train])
            aucs.append(roc_auc_score(z[test], model.decision_function(x[test])))
    return float(np.mean(aucs)) if aucs else float("nan")


def blind_probe_auc(
    embeddings: np.ndarray,
    is_generated: np.ndarray,
    groups: Sequence[str],
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Query-blind source probe for data-level checks: :func:`probe_auc_blind` with a boolean source mask.

    Args:
        embeddings: [n, d] embeddings of the negatives (any encoder; standardised inside the probe).
        is_generated: [n] bool, True for LLM-written negatives, False for mined ones.
        groups: [n] the query id of every negative; folds never split a query.
        folds, seed: as for :func:`probe_auc_blind`.
    Returns:
        Cross-validated ROC-AUC (0.5 = the sources are not linearly separable on unseen queries), or NaN.
    """
    return probe_auc_blind(embeddings, np.asarray(is_generated, dtype=bool), groups, folds=folds, seed=seed)


def probe_auc_similarity(
    scores: ArrayLike, labels: ArrayLike, groups: ArrayLike | Sequence[Any] | None = None
) -> float:
    """ROC-AUC of the similarity S as a score for Z = 1 (generated), computed within queries.

    With ``groups`` (the query id of every negative) the AUC counts only pairs of a generated and a mined
    negative of the same query: ``AUC = Σ_q U_q / Σ_q n_gen,q · n_mined,q``, where ``U_q`` is the number of
    the query's (generated, mined) pairs in which the generated one has the higher S (ties count 1/2). It is
    the probability that a query scores a generated negative above one of its own mined negatives, and does
    not move when similarity levels and generated counts differ between queries. ``groups=None`` pools all
    negatives into one ranking (a single query), which is confounded by such between-query differences.

    Returns:
        The AUC, or NaN when no query has both a generated and a mined negative.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    z = _binary_labels(labels)
    if s.shape != z.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.shape[0]} and {z.shape[0]}")
    g = np.zeros(z.shape[0], dtype=np.int64) if groups is None else group_codes(groups, z.shape[0])
    wins = pairs = 0.0
    for code in np.unique(g):
        members = g == code
        zq = z[members]
        n_gen = int(zq.sum())
        n_mined = zq.size - n_gen
        if n_gen == 0 or n_mined == 0:
            continue
        ranks = rankdata(s[members])  # average ranks: a tie counts 1/2
        wins += float(ranks[zq == 1].sum()) - n_gen * (n_gen + 1) / 2.0  # Mann-Whitney U of the generated
        pairs += float(n_gen * n_mined)
    return wins / pairs if pairs else float("nan")
