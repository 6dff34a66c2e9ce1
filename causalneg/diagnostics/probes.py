"""Source probes: can the negative's source Z (0 = mined, 1 = generated) be predicted, and from what?

- :func:`probe_auc_blind` -- *query-blind* probe: a linear classifier sees only the negative's embedding.
  A cross-validated ROC-AUC near 0.5 means the encoder does not separate the sources by style; near 1.0 means
  it does, whatever the query (a shortcut the contrastive loss can exploit).
- :func:`probe_auc_similarity` -- the query-negative similarity S itself used as a score for Z.
  AUC > 0.5: generated negatives score higher than mined ones (harder); < 0.5: lower (easier, the shortcut
  that makes them useless as negatives). ``|AUC − 0.5|`` is the effect size; ``I(Z; S)`` measures the
  same dependence in nats.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


def probe_auc_blind(
    neg_embeddings: ArrayLike, labels: ArrayLike, folds: int = 5, seed: int = 0, c: float = 1.0
) -> float:
    """Mean held-out ROC-AUC over stratified folds of a logistic regression predicting Z from the embedding.

    The classifier is ``StandardScaler → LogisticRegression(C=c)`` (L2-regularised, lbfgs), fitted on
    ``folds − 1`` folds and scored on the held-out one; the folds are shuffled with ``seed``.

    Args:
        neg_embeddings: [N, D] negative embeddings.
        labels: [N] binary source labels Z.
        folds: number of cross-validation folds (>= 2).
        seed: seeds the fold assignment.
        c: inverse L2 strength of the logistic regression.
    Returns:
        The mean AUC, or NaN when either class has fewer than ``folds`` members (no valid split).
    """
    x = np.asarray(neg_embeddings, dtype=np.float64)
    z = np.asarray(labels).reshape(-1).astype(np.int64)
    if x.ndim != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"neg_embeddings must be [N, D] with N = len(labels), got {x.shape} and {z.shape}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if z.size and (z.min() < 0 or z.max() > 1):
        raise ValueError("labels must be 0 (mined) or 1 (generated)")
    counts = np.bincount(z, minlength=2)
    if counts.min() < folds:
        return float("nan")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    aucs = []
    # One BLAS thread: the problem is small, and more threads oversubscribe the cores the trainer is using.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        # A probe that has not fully converged still gives a valid (if conservative) held-out AUC.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        for train, test in splitter.split(x, z):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=200))
            model.fit(x[train], z[train])
            aucs.append(roc_auc_score(z[test], model.decision_function(x[test])))
    return float(np.mean(aucs))


def probe_auc_similarity(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC-AUC of the similarity S as a score for Z = 1 (generated); NaN when only one class is present."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    z = np.asarray(labels).reshape(-1).astype(np.int64)
    if s.shape != z.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.shape[0]} and {z.shape[0]}")
    if np.unique(z).size < 2:
        return float("nan")
    return float(roc_auc_score(z, s))
