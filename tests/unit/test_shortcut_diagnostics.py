"""Source probes, the full shortcut report (against per-group reference loops) and its plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from causalneg.diagnostics.plots import mi_curve, save_figure, source_histograms
from causalneg.diagnostics.probes import probe_auc_blind, probe_auc_similarity
from causalneg.diagnostics.shortcut import shortcut_diagnostics
from causalneg.records import NegativeSource

MINED, GEN, NAIVE, RANDOM = (
    int(s)
    for s in (
        NegativeSource.MINED,
        NegativeSource.GENERATED,
        NegativeSource.NAIVE_GENERATED,
        NegativeSource.RANDOM,
    )
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def groups(g: int = 48, n_mined: int = 4, n_gen: int = 2, d: int = 16, style: float = 0.0, seed: int = 0):
    """Random unit embeddings; generated negatives get a shared "style" offset of size ``style``."""
    rng = np.random.default_rng(seed)
    k = n_mined + n_gen
    q = rng.normal(size=(g, d))
    p = q + 0.5 * rng.normal(size=(g, d))
    n = q[:, None, :] * 0.3 + rng.normal(size=(g, k, d))
    direction = rng.normal(size=d)
    n[:, n_mined:] += style * direction / np.linalg.norm(direction) * np.sqrt(d)
    source = np.array([MINED] * n_mined + [GEN] * n_gen)[None].repeat(g, 0)
    mask = np.ones((g, k), dtype=bool)
    return q, p, n, source, mask


def test_blind_probe_is_chance_on_random_and_perfect_on_shifted_embeddings() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16))
    z = (np.arange(600) % 3 == 0).astype(int)
    query = np.arange(600) // 6
    assert probe_auc_blind(x, z, query, seed=0) == pytest.approx(0.5, abs=0.07)
    shifted = x + 3.0 * z[:, None] * np.eye(16)[0]
    assert probe_auc_blind(shifted, z, query, seed=0) > 0.98


def test_probe_edge_cases() -> None:
    x = np.random.default_rng(1).normal(size=(20, 4))
    z = np.array([1] * 4 + [0] * 16)
    query = np.arange(20)  # one negative per query
    assert math.isnan(probe_auc_blind(x, z, query, folds=5))  # 4 generated < 5 folds
    assert not math.isnan(probe_auc_blind(x, z, query, folds=4))
    with pytest.raises(ValueError, match="0 \\(mined\\) or 1"):
        probe_auc_blind(x, np.full(20, 2), query)
    assert probe_auc_similarity([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert probe_auc_similarity([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert math.isnan(probe_auc_similarity([0.1, 0.2], [1, 1]))


def test_report_detects_a_style_shortcut() -> None:
    report = shortcut_diagnostics(*groups(style=1.0), n_permutations=5, seed=0)
    m = report.metrics
    assert m["probe_auc_blind"] > 0.95
    assert m["n_mined"] == 48 * 4 and m["n_generated"] == 48 * 2 and m["n_groups"] == 48
    assert m["gen_mass_expected"] == pytest.approx(2 / 6)
    assert m["mi_perm_p95"] == m["mi_knn_perm_p95"]
    assert report.skipped == []
    assert all(math.isfinite(v) for v in m.values())


def test_report_without_shortcut_sits_in_the_noise() -> None:
    report = shortcut_diagnostics(*groups(g=96, style=0.0, seed=1), n_permutations=10, seed=0)
    m = report.metrics
    assert m["probe_auc_blind"] == pytest.approx(0.5, abs=0.1)
    assert m["probe_auc_sim"] == pytest.approx(0.5, abs=0.1)
    assert m["mi_binned"] <= m["mi_binned_perm_p95"] + 0.01
    assert m["mi_knn"] <= m["mi_knn_perm_p95"] + 0.02


def reference_entropy_metrics(q, n, source, mask, tau):
    """Per-group loop version of gen_mass, gen_mass_expected and h_gen_norm."""
    masses, expected, h_norm = [], [], []
    for g in range(q.shape[0]):
        qn = q[g] / np.linalg.norm(q[g])
        keep = [k for k in range(n.shape[1]) if mask[g, k] and source[g, k] in (MINED, GEN, NAIVE)]
        gen = [k for k in keep if source[g, k] in (GEN, NAIVE)]
        if not gen:
            continue
        sims = np.array([qn @ (n[g, k] / np.linalg.norm(n[g, k])) for k in keep]) / tau
        prob = torch.softmax(torch.tensor(sims), dim=0).numpy()
        p_gen = np.array([prob[keep.index(k)] for k in gen])
        masses.append(p_gen.sum())
        expected.append(len(gen) / len(keep))
        if len(gen) >= 2:
            pt = p_gen / p_gen.sum()
            h_norm.append(-(pt * np.log(pt)).sum() / np.log(len(gen)))
    return np.mean(masses), np.mean(expected), np.mean(h_norm)


def test_entropy_metrics_match_a_per_group_loop_with_mixed_sources_and_padding() -> None:
    q, p, n, source, mask = groups(g=12, n_mined=3, n_gen=3, d=8, style=0.5, seed=2)
    rng = np.random.default_rng(3)
    source = rng.choice([MINED, GEN, NAIVE, RANDOM], size=source.shape)
    mask = rng.random(mask.shape) > 0.2
    source[0] = MINED  # a group with no generated negatives
    report = shortcut_diagnostics(q, p, n, source, mask, temperature_ent=0.1, n_permutations=2)
    mass, expected, h_norm = reference_entropy_metrics(q, n, source, mask, 0.1)
    assert report.metrics["gen_mass"] == pytest.approx(mass, rel=1e-9)
    assert report.metrics["gen_mass_expected"] == pytest.approx(expected, rel=1e-9)
    assert report.metrics["h_gen_norm"] == pytest.approx(h_norm, rel=1e-9)
    assert report.similarity.shape == (mask.sum(),)  # random negatives kept for the histograms
    assert set(report.source.tolist()) <= {MINED, GEN, NAIVE, RANDOM}


def test_masked_slots_do_not_matter_and_torch_equals_numpy() -> None:
    q, p, n, source, mask = groups(g=30, seed=4)
    mask[:, -1] = False
    other = n.copy()
    other[:, -1] = 123.0
    a = shortcut_diagnostics(q, p, n, source, mask, n_permutations=3)
    b = shortcut_diagnostics(
        torch.tensor(q),
        torch.tensor(p),
        torch.tensor(other),
        torch.tensor(source),
        torch.tensor(mask),
        n_permutations=3,
    )
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-9, abs=1e-12), key
    half = shortcut_diagnostics(*(torch.tensor(x, dtype=torch.bfloat16) for x in (q, p, n)), source, mask)
    assert half.metrics.keys() == a.metrics.keys()


def test_identical_generated_negatives_spread_attention_evenly() -> None:
    q, p, n, source, mask = groups(g=10, n_mined=3, n_gen=3, seed=5)
    n[:, 3:] = n[:, 3:4]
    report = shortcut_diagnostics(q, p, n, source, mask, n_permutations=2)
    assert report.metrics["h_gen_norm"] == pytest.approx(1.0, abs=1e-9)


def test_no_generated_negatives_omits_dependence_metrics() -> None:
    q, p, n, _, mask = groups(g=20, seed=6)
    report = shortcut_diagnostics(q, p, n, np.zeros(mask.shape, dtype=int), mask, n_permutations=2)
    assert report.metrics == {"n_groups": 20.0, "n_mined": float(mask.sum()), "n_generated": 0.0}
    assert any("no generated negatives" in reason for reason in report.skipped)


def test_shapes_are_checked() -> None:
    q, p, n, source, mask = groups(g=4)
    with pytest.raises(ValueError, match=r"\[G, K, D\]"):
        shortcut_diagnostics(q, p, n[:, :, :-1], source, mask)
    with pytest.raises(ValueError, match="neg_source and neg_mask"):
        shortcut_diagnostics(q, p, n, source[:, :-1], mask)


def test_plots_render_pngs_with_descriptive_labels(tmp_path: Path) -> None:
    report = shortcut_diagnostics(*groups(style=0.5), n_permutations=2)
    fig = source_histograms(report, title="start of training, step 0")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Similarity by negative source", "Margin by source"]
    assert fig.axes[0].get_xlabel() == "cos(query, negative)"
    assert {t.get_text().split(" ")[0] for t in fig.axes[0].get_legend().get_texts()} == {
        "mined",
        "generated",
    }
    path = save_figure(fig, tmp_path / "hist.png")
    assert path.read_bytes()[:8] == PNG_MAGIC

    curve = mi_curve([(0, report.metrics), (10, report.metrics), (20, {"n_mined": 1.0})])
    ax = curve.axes[0]
    assert ax.get_ylabel() == "I(source; similarity) [nats]"
    assert list(ax.lines[0].get_xdata()) == [0, 10]  # the step without MI is skipped
    assert save_figure(curve, tmp_path / "sub" / "mi.png").read_bytes()[:8] == PNG_MAGIC


def test_query_ids_group_rows_and_default_to_one_query_per_row() -> None:
    q, p, n, source, mask = groups(g=30, style=0.5, seed=7)
    default = shortcut_diagnostics(q, p, n, source, mask, n_permutations=3)
    named = shortcut_diagnostics(
        q, p, n, source, mask, n_permutations=3, query_ids=[f"q{i:02d}" for i in range(30)]
    )
    assert named.metrics == default.metrics
    with pytest.raises(ValueError, match="query id of every sample"):
        shortcut_diagnostics(q, p, n, source, mask, query_ids=["a"] * 29)
