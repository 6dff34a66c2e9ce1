"""Source probes are grouped by query: no signal that lives only inside one query can leak into the AUC.

The null data sets below have no source signal that transfers across queries: each query has its own
embedding offset (its topic) or similarity level and its own share of generated negatives. A probe that is
fitted and scored on negatives of the same query, or that ranks negatives of different queries against each
other, reports a spurious shortcut there; the grouped probes must sit at 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from causalneg.diagnostics import blind_probe_auc
from causalneg.diagnostics.probes import probe_auc_blind, probe_auc_similarity

SEEDS = range(8)


def topic_null(seed: int, queries: int = 80, per_query: int = 10, d: int = 48, offset: float = 6.0):
    """Negatives of a query share its random offset direction; P(generated) is drawn per query."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(queries, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    share = rng.uniform(0.05, 0.95, size=queries)
    x = offset * directions.repeat(per_query, 0) + rng.normal(size=(queries * per_query, d))
    z = (rng.random(queries * per_query) < share.repeat(per_query)).astype(int)
    return x, z, np.arange(queries).repeat(per_query)


def per_negative_folds_auc(x: np.ndarray, z: np.ndarray, seed: int, folds: int = 5) -> float:
    """The former probe: the same classifier on StratifiedKFold over individual negatives (leaks queries)."""
    aucs = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, z):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(x[train], z[train])
        aucs.append(roc_auc_score(z[test], model.decision_function(x[test])))
    return float(np.mean(aucs))


def test_blind_probe_with_query_grouped_folds_is_chance_where_per_negative_folds_leak() -> None:
    grouped, leaky = [], []
    for seed in SEEDS:
        x, z, query = topic_null(seed)
        grouped.append(probe_auc_blind(x, z, query, seed=seed))
        leaky.append(per_negative_folds_auc(x, z, seed))
    grouped_a, leaky_a = np.array(grouped), np.array(leaky)
    # Measured (30 seeds): grouped 0.465-0.554 (mean 0.511); per-negative folds 0.554-0.664 (mean 0.595).
    assert np.all(np.abs(grouped_a - 0.5) < 0.1), grouped
    assert abs(grouped_a.mean() - 0.5) < 0.04, grouped
    assert leaky_a.mean() - 0.5 > 0.06, leaky  # the same check fails for the leaky probe
    assert np.all(leaky_a > grouped_a - 0.02)


def test_blind_probe_auc_takes_a_boolean_mask_and_string_query_ids() -> None:
    x, z, query = topic_null(0, queries=30)
    x[z == 1, 0] += 4.0  # a style offset that every query shares: visible to the probe
    names = [f"q{i:03d}" for i in query]  # sorted like the integers: the same folds
    auc = blind_probe_auc(x, z.astype(bool), names, folds=5, seed=0)
    assert auc == probe_auc_blind(x, z, query, folds=5, seed=0)
    assert auc > 0.95


def test_blind_probe_needs_every_class_in_as_many_queries_as_folds() -> None:
    x = np.random.default_rng(1).normal(size=(40, 4))
    z = np.array([1, 0] * 20)
    query = np.arange(40) // 10  # 4 queries, both sources in each
    assert math.isnan(probe_auc_blind(x, z, query, folds=5))
    assert not math.isnan(probe_auc_blind(x, z, query, folds=4))
    with pytest.raises(ValueError, match="query id of every sample"):
        probe_auc_blind(x, z, query[:-1])


def level_null(seed: int, queries: int = 100, per_query: int = 10):
    """Per-query similarity level; queries with higher similarity also have more generated negatives."""
    rng = np.random.default_rng(seed)
    level = rng.normal(size=queries)
    n_gen = 1 + np.argsort(np.argsort(level)) * (per_query - 2) // (queries - 1)  # 1 .. per_query - 1
    z = np.concatenate([np.r_[np.ones(k), np.zeros(per_query - k)] for k in n_gen]).astype(int)
    s = level.repeat(per_query) + 0.3 * rng.normal(size=queries * per_query)
    return s, z, np.arange(queries).repeat(per_query)


def test_similarity_probe_compares_within_queries() -> None:
    within, pooled = [], []
    for seed in SEEDS:
        s, z, query = level_null(seed)
        within.append(probe_auc_similarity(s, z, query))
        pooled.append(probe_auc_similarity(s, z))
    assert np.all(np.abs(np.array(within) - 0.5) < 0.1), within
    assert np.mean(pooled) > 0.7, pooled  # between-query levels make generated negatives look "harder"


def test_similarity_probe_counts_only_same_query_pairs_and_ties_as_half() -> None:
    # Query a: generated 0.5 vs mined 0.1, 0.5 -> 1 + 1/2 of 2 pairs. Query b: generated 0.0 vs mined 0.9 -> 0.
    s = [0.5, 0.1, 0.5, 0.0, 0.9, 0.7]
    z = [1, 0, 0, 1, 0, 1]
    q = ["a", "a", "a", "b", "b", "c"]  # query c has no mined negative: no pairs
    assert probe_auc_similarity(s, z, q) == pytest.approx(1.5 / 3)
    assert probe_auc_similarity([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [0, 0, 0, 0]) == 1.0
    assert math.isnan(probe_auc_similarity([0.1, 0.9], [0, 1], ["a", "b"]))  # no query holds both
