"""One definition of the generated mass and of τ_ent, shared by the regularizer and the diagnostics."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from causalneg.contracts import TAU_ENT
from causalneg.diagnostics.callback import ShortcutDiagnostics
from causalneg.diagnostics.shortcut import shortcut_diagnostics
from causalneg.losses import QueryViewEntropy
from causalneg.records import NegativeSource

CONF = Path(__file__).resolve().parents[2] / "conf"
SOURCES = [int(s) for s in (NegativeSource.MINED, NegativeSource.GENERATED, NegativeSource.NAIVE_GENERATED)]


def mixed_batch(seed: int, b: int = 24, k: int = 10, d: int = 16) -> dict[str, torch.Tensor]:
    """Unit embeddings; mined, generated, naive-generated and random negatives, padding, a row without G."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    p = F.normalize(q + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    n = F.normalize(q[:, None] + torch.randn(b, k, d, generator=g, dtype=torch.float64), dim=-1)
    source = torch.tensor([*SOURCES, int(NegativeSource.RANDOM)])[torch.randint(0, 4, (b, k), generator=g)]
    mask = torch.rand(b, k, generator=g) > 0.2
    source[0] = int(NegativeSource.MINED)
    n[:, :, 0] += 2.0 * (source == int(NegativeSource.RANDOM))  # random negatives: far from every query
    return {"q": q, "p": p, "n": F.normalize(n, dim=-1), "neg_source": source, "neg_mask": mask}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regularizer_and_diagnostics_report_the_same_generated_mass(seed: int) -> None:
    batch = mixed_batch(seed)
    assert (batch["neg_source"] == int(NegativeSource.RANDOM)).any()  # the sources that set them apart before
    stats = QueryViewEntropy()(**batch).stats
    report = shortcut_diagnostics(**batch, n_permutations=2)
    assert report.metrics["gen_mass"] == pytest.approx(stats["gen_mass"].item(), rel=1e-9)
    assert report.metrics["gen_mass_expected"] == pytest.approx(stats["gen_mass_expected"].item(), rel=1e-9)
    assert report.metrics["h_gen_norm"] == pytest.approx(stats["h_gen_normalized"].item(), rel=1e-9)


def test_the_pool_is_mined_and_generated_only() -> None:
    # One query: mined at cos 1, generated at cos 0, a random one at cos 0. P over {mined, generated} only.
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    n = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]], dtype=torch.float64)
    source = torch.tensor(
        [[int(NegativeSource.MINED), int(NegativeSource.GENERATED), int(NegativeSource.RANDOM)]]
    )
    batch = {"q": q, "p": q, "n": n, "neg_source": source, "neg_mask": torch.ones(1, 3, dtype=torch.bool)}
    expected_mass = 1.0 / (1.0 + np.exp(1.0 / TAU_ENT))  # softmax([1, 0] / τ) at the generated slot
    stats = QueryViewEntropy()(**batch).stats
    assert stats["gen_mass"].item() == pytest.approx(expected_mass, rel=1e-9)
    assert stats["gen_mass_expected"].item() == pytest.approx(0.5)  # Ng / (Nm + Ng) = 1 / 2, not 1 / 3
    assert shortcut_diagnostics(**batch, n_permutations=2).metrics["gen_mass"] == pytest.approx(expected_mass)


def test_tau_ent_is_defined_once() -> None:
    assert QueryViewEntropy().temperature == TAU_ENT
    assert ShortcutDiagnostics().temperature_ent == TAU_ENT
    assert inspect.signature(shortcut_diagnostics).parameters["temperature_ent"].default == TAU_ENT
    regularizer = OmegaConf.load(CONF / "regularizer" / "query_view_entropy.yaml")
    diagnostics = OmegaConf.load(CONF / "diagnostics" / "default.yaml")
    assert regularizer.query_view_entropy.temperature == TAU_ENT
    assert diagnostics.callback.temperature_ent == TAU_ENT
