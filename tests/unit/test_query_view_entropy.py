"""QueryViewEntropy: batched implementation vs a per-query loop written from the formula (DESIGN §1b)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from causalneg.losses import QueryViewEntropy
from causalneg.records import NegativeSource

GEN = (int(NegativeSource.GENERATED), int(NegativeSource.NAIVE_GENERATED))


def make_batch(seed: int, b: int = 12, k: int = 9, d: int = 16, dtype: torch.dtype = torch.float64) -> dict:
    """Random batch with mixed sources, padding, rows without generated negatives and an all-padding row."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    p = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    n = F.normalize(torch.randn(b, k, d, generator=g, dtype=dtype), dim=-1)
    source = torch.randint(0, 4, (b, k), generator=g)  # mined, generated, naive_generated, random
    mask = torch.rand(b, k, generator=g) > 0.25
    source[0] = int(NegativeSource.MINED)  # no generated negative at all
    mask[1] = False  # no valid negative at all
    source[2] = int(NegativeSource.GENERATED)  # only generated ones
    mask[2] = True
    source[3, :] = int(NegativeSource.MINED)
    source[3, 4] = int(NegativeSource.NAIVE_GENERATED)  # exactly one generated
    mask[3, 4] = True
    return {"q": q, "p": p, "n": n, "neg_source": source, "neg_mask": mask}


def leaves(batch: dict) -> dict:
    """The same batch with q, p, n as fresh leaves requiring grad."""
    out = dict(batch)
    for key in ("q", "p", "n"):
        out[key] = batch[key].detach().clone().requires_grad_(True)
    return out


def reference(batch: dict, tau: float, gen_codes: tuple[int, ...] = GEN) -> tuple[Tensor, dict[str, float]]:
    """Per-query loop straight from the formula: s_j = <sg(q), d_j>/tau over valid M ∪ G, mined detached.

    M = the mined negatives only: random (and other non-generated) negatives are in neither M nor G."""
    q, n, src, mask = batch["q"], batch["n"], batch["neg_source"], batch["neg_mask"]
    losses, masses, expected, h_norm = [], [], [], []
    for i in range(q.shape[0]):
        pool = (int(NegativeSource.MINED), *gen_codes)
        valid = [k for k in range(n.shape[1]) if bool(mask[i, k]) and int(src[i, k]) in pool]
        gen = [k for k in valid if int(src[i, k]) in gen_codes]
        if not gen:
            continue
        d = torch.stack([n[i, k] if k in gen else n[i, k].detach() for k in valid])
        s = d @ q[i].detach() / tau
        prob = torch.softmax(s, dim=0)
        p_gen = prob[[valid.index(k) for k in gen]]
        mass = p_gen.sum()
        p_tilde = p_gen / mass
        h = -(p_tilde * p_tilde.log()).sum()
        share = len(gen) / len(valid)
        losses.append(-h + (mass - share) ** 2)
        masses.append(mass.item())
        expected.append(share)
        if len(gen) >= 2:
            h_norm.append(h.item() / math.log(len(gen)))
    value = torch.stack(losses).mean() if losses else n.sum() * 0
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    stats = {
        "gen_mass": mean(masses),
        "gen_mass_expected": mean(expected),
        "h_gen_normalized": mean(h_norm),
        "frac_queries_with_generated": len(losses) / q.shape[0],
    }
    return value, stats


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.02])
def test_batched_matches_reference_loop(seed: int, tau: float) -> None:
    batch = make_batch(seed)
    ref_in, ours_in = leaves(batch), leaves(batch)
    ref_value, ref_stats = reference(ref_in, tau)
    out = QueryViewEntropy(temperature=tau)(**ours_in)
    assert torch.allclose(out.value, ref_value, atol=1e-6, rtol=0), (out.value, ref_value)
    ref_value.backward()
    out.value.backward()
    assert torch.allclose(ours_in["n"].grad, ref_in["n"].grad, atol=1e-6, rtol=0)
    for key, expected in ref_stats.items():
        assert out.stats[key].item() == pytest.approx(expected, abs=1e-6), key


def test_only_generated_negatives_get_gradient() -> None:
    batch = leaves(make_batch(5))
    QueryViewEntropy()(**batch).value.backward()
    gen = torch.isin(batch["neg_source"], torch.tensor(GEN)) & batch["neg_mask"]
    grad_norm = batch["n"].grad.norm(dim=-1)
    assert batch["q"].grad is None and batch["p"].grad is None
    assert torch.all(grad_norm[~gen] == 0)  # mined, random and padding slots
    assert torch.all(grad_norm[gen & (batch["neg_source"] != 0)].sum() > 0)
    assert (grad_norm[gen] > 0).float().mean() > 0.9  # single-G rows have H = 0 but L_bal still acts


def test_gradcheck_of_analytic_backward() -> None:
    """Finite differences over the generated slots only: mined ones are stop-gradient by definition."""
    batch = make_batch(7, b=5, k=6, d=4)
    reg = QueryViewEntropy(temperature=0.3)
    gen = torch.isin(batch["neg_source"], torch.tensor(GEN)) & batch["neg_mask"]
    fixed = {k: v for k, v in batch.items() if k != "n"}

    def value(x: Tensor) -> Tensor:
        n = batch["n"].clone()
        n[gen] = x
        return reg(n=n, **fixed).value

    x = batch["n"][gen].clone().requires_grad_(True)
    assert x.shape[0] >= 4
    assert torch.autograd.gradcheck(value, (x,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_no_generated_negatives_gives_zero_and_finite_grads() -> None:
    batch = leaves(make_batch(3))
    batch["neg_source"] = torch.zeros_like(batch["neg_source"])
    out = QueryViewEntropy()(**batch)
    assert out.value.item() == 0.0 and out.value.requires_grad
    out.value.backward()
    assert torch.isfinite(batch["n"].grad).all() and batch["n"].grad.abs().sum() == 0
    assert out.stats["frac_queries_with_generated"].item() == 0.0
    assert all(torch.isfinite(v) for v in out.stats.values())


def test_all_generated_is_finite_and_pure_entropy() -> None:
    batch = leaves(make_batch(4))
    batch["neg_source"] = torch.full_like(batch["neg_source"], int(NegativeSource.GENERATED))
    batch["neg_mask"] = torch.ones_like(batch["neg_mask"])
    out = QueryViewEntropy()(**batch)
    ref, _ = reference(batch, 0.1)
    assert torch.isfinite(out.value) and torch.allclose(out.value, ref, atol=1e-9)
    assert out.stats["gen_mass"].item() == pytest.approx(1.0) and out.value.item() < 0  # L_bal = 0, -H < 0
    out.value.backward()
    assert torch.isfinite(batch["n"].grad).all()


def test_empty_negative_axis() -> None:
    q = F.normalize(torch.randn(3, 4), dim=-1)
    n = torch.zeros(3, 0, 4, requires_grad=True)
    out = QueryViewEntropy()(
        q, q, n, torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, dtype=torch.bool)
    )
    assert out.value.item() == 0.0
    out.value.backward()


def test_generated_set_comes_from_sources_not_positions() -> None:
    batch = make_batch(6)
    perm = torch.randperm(batch["n"].shape[1], generator=torch.Generator().manual_seed(0))
    permuted = {**batch, "n": batch["n"][:, perm], "neg_source": batch["neg_source"][:, perm]}
    permuted["neg_mask"] = batch["neg_mask"][:, perm]
    reg = QueryViewEntropy()
    assert torch.allclose(reg(**batch).value, reg(**permuted).value, atol=1e-12)


def test_generated_sources_option() -> None:
    batch = make_batch(8)
    only_counterfactual = QueryViewEntropy(generated_sources=["generated"])
    ref, _ = reference(batch, 0.1, gen_codes=(int(NegativeSource.GENERATED),))
    assert torch.allclose(only_counterfactual(**batch).value, ref, atol=1e-9)
    assert not torch.allclose(QueryViewEntropy()(**batch).value, ref, atol=1e-6)
    with pytest.raises(ValueError, match="unknown negative source"):
        QueryViewEntropy(generated_sources=["llm"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    batch = leaves({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in make_batch(9).items()})
    out = QueryViewEntropy()(**batch)
    ref, _ = reference(make_batch(9), 0.1)
    assert out.value.dtype == torch.float32 and abs(out.value.item() - ref.item()) < 0.05
    out.value.backward()
    assert batch["n"].grad.dtype == dtype and torch.isfinite(batch["n"].grad).all()


def test_shape_errors_name_the_tensor() -> None:
    batch = make_batch(0)
    with pytest.raises(ValueError, match="neg_source"):
        QueryViewEntropy()(**{**batch, "neg_source": batch["neg_source"][:, :-1]})
    with pytest.raises(ValueError, match="temperature"):
        QueryViewEntropy(temperature=0.0)
