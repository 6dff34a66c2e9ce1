"""InfoNCE vs a hand-written cross-entropy; the Objective's weighting and stats; the Hydra config groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from causalneg.errors import ConfigError
from causalneg.losses import (
    InfoNCE,
    Objective,
    QueryViewEntropy,
    all_gather_with_grad,
    build_objective,
    per_source_similarity_stats,
)
from causalneg.records import NegativeSource

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def make_batch(seed: int, b: int = 6, k: int = 5, d: int = 8) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    p = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    n = F.normalize(torch.randn(b, k, d, generator=g, dtype=torch.float64), dim=-1)
    source = torch.randint(0, 3, (b, k), generator=g)
    mask = torch.rand(b, k, generator=g) > 0.3
    mask[0] = False  # a query whose negatives are all padding
    return {"q": q, "p": p, "n": n, "neg_source": source, "neg_mask": mask}


def leaves(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    out = dict(batch)
    for key in ("q", "p", "n"):
        out[key] = batch[key].detach().clone().requires_grad_(True)
    return out


def reference_infonce(batch: dict[str, Tensor], tau: float, in_batch: bool) -> Tensor:
    """Per-query cross-entropy with the positive first: [p_i, valid n_ik, (p_j, valid n_jk for j != i)]."""
    q, p, n, mask = batch["q"], batch["p"], batch["n"], batch["neg_mask"]
    losses = []
    for i in range(q.shape[0]):
        cands = [p[i]] + [n[i, k] for k in range(n.shape[1]) if mask[i, k]]
        if in_batch:
            for j in range(q.shape[0]):
                if j != i:
                    cands += [p[j]] + [n[j, k] for k in range(n.shape[1]) if mask[j, k]]
        logits = torch.stack([q[i] @ c for c in cands]) / tau
        losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


def grads(batch: dict[str, Tensor]) -> list[Tensor]:
    return [batch[k].grad for k in ("q", "p", "n")]


@pytest.mark.parametrize("in_batch", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_infonce_matches_manual_cross_entropy(in_batch: bool, seed: int) -> None:
    ours, ref = leaves(make_batch(seed)), leaves(make_batch(seed))
    loss = InfoNCE(temperature=0.07, in_batch_negatives=in_batch)(
        ours["q"], ours["p"], ours["n"], ours["neg_mask"]
    )
    expected = reference_infonce(ref, 0.07, in_batch)
    assert torch.allclose(loss, expected, atol=1e-10)
    loss.backward()
    expected.backward()
    for a, b in zip(grads(ours), grads(ref), strict=True):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("in_batch", [False, True])
def test_padding_slots_are_ignored(in_batch: bool) -> None:
    batch = make_batch(3)
    loss_fn = InfoNCE(in_batch_negatives=in_batch)
    junk = batch["n"].clone()
    junk[~batch["neg_mask"]] = 5.0 * torch.randn(
        int((~batch["neg_mask"]).sum()), junk.shape[-1], dtype=junk.dtype
    )
    a = loss_fn(batch["q"], batch["p"], batch["n"], batch["neg_mask"])
    b = loss_fn(batch["q"], batch["p"], junk, batch["neg_mask"])
    assert torch.allclose(a, b, atol=1e-12)
    all_valid = loss_fn(batch["q"], batch["p"], batch["n"], None)
    assert not torch.allclose(a, all_valid)


def test_infonce_without_negatives_and_low_precision() -> None:
    batch = make_batch(4)
    q, p = batch["q"], batch["p"]
    assert InfoNCE()(q, p, batch["n"][:, :0], batch["neg_mask"][:, :0]).item() == 0.0  # only the positive
    half = InfoNCE()(q.bfloat16(), p.bfloat16(), batch["n"].bfloat16(), batch["neg_mask"])
    full = InfoNCE()(q, p, batch["n"], batch["neg_mask"])
    assert half.dtype == torch.float32 and abs(half.item() - full.item()) < 0.2
    with pytest.raises(ValueError, match="n must be"):
        InfoNCE()(q, p, batch["n"][1:], batch["neg_mask"])
    with pytest.raises(ValueError, match="bool"):
        InfoNCE()(q, p, batch["n"], batch["neg_mask"].long())


@pytest.mark.parametrize("in_batch", [False, True])
def test_weight_zero_is_exactly_plain_infonce(in_batch: bool) -> None:
    plain_in, obj_in = leaves(make_batch(5)), leaves(make_batch(5))
    plain = InfoNCE(in_batch_negatives=in_batch)(
        plain_in["q"], plain_in["p"], plain_in["n"], plain_in["neg_mask"]
    )
    objective = Objective(InfoNCE(in_batch_negatives=in_batch), {"qve": QueryViewEntropy()}, {"qve": 0.0})
    out = objective(**obj_in)
    assert torch.equal(out.loss, plain)
    plain.backward()
    out.loss.backward()
    for a, b in zip(grads(plain_in), grads(obj_in), strict=True):
        assert torch.equal(a, b)
    assert out.parts["loss/reg/qve"].item() != 0.0  # still computed, for its stats
    assert {"reg/qve/gen_mass", "reg/qve/h_gen_normalized"} <= set(out.stats)


def test_objective_sums_weighted_parts_and_routes_gradients() -> None:
    batch = leaves(make_batch(6))
    out = Objective(InfoNCE(), {"qve": QueryViewEntropy()}, {"qve": 0.5})(**batch)
    parts = out.parts
    assert set(parts) == {"loss/infonce", "loss/reg/qve", "loss/total"}
    assert torch.allclose(parts["loss/total"], parts["loss/infonce"] + 0.5 * parts["loss/reg/qve"])
    assert all(not v.requires_grad for v in [*parts.values(), *out.stats.values()])
    out.loss.backward()
    only_infonce = leaves(make_batch(6))
    InfoNCE()(only_infonce["q"], only_infonce["p"], only_infonce["n"], only_infonce["neg_mask"]).backward()
    assert torch.equal(batch["q"].grad, only_infonce["q"].grad)  # the regularizer never touches q
    assert not torch.allclose(batch["n"].grad, only_infonce["n"].grad)


def test_objective_rejects_mismatched_weights() -> None:
    with pytest.raises(ConfigError, match="weights"):
        Objective(InfoNCE(), {"qve": QueryViewEntropy()}, {})
    with pytest.raises(ConfigError, match="weights"):
        Objective(InfoNCE(), None, {"qve": 1.0})


def test_per_source_similarity_stats() -> None:
    batch = make_batch(7, b=4, k=6)
    stats = per_source_similarity_stats(**batch)
    q, p, n, src, mask = (batch[k] for k in ("q", "p", "n", "neg_source", "neg_mask"))
    cos_pos = (q * p).sum(-1)
    assert torch.allclose(stats["sim/positive"], cos_pos.mean())
    for source in NegativeSource:
        sims = [
            (q[i] @ n[i, k], cos_pos[i])
            for i in range(4)
            for k in range(6)
            if mask[i, k] and src[i, k] == source
        ]
        name = source.name.lower()
        if not sims:
            assert f"sim/{name}" not in stats
            continue
        assert torch.allclose(stats[f"sim/{name}"], torch.stack([s for s, _ in sims]).mean())
        assert torch.allclose(stats[f"margin/{name}"], torch.stack([c - s for s, c in sims]).mean())
    assert {"sim/mined", "sim/generated", "sim/naive_generated"} <= set(stats)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_hydra_groups_compose_and_build(tmp_path: Path) -> None:
    """The groups work as list-valued defaults and as an experiment's `override /regularizer: [...]`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    searchpath = f"hydra:\n  searchpath:\n    - file://{CONF_DIR}\n"
    _write(
        tmp_path / "with_reg.yaml",
        f"defaults:\n  - loss: infonce\n  - regularizer: [query_view_entropy]\n  - _self_\n{searchpath}",
    )
    _write(
        tmp_path / "plain.yaml",
        f"defaults:\n  - loss: infonce\n  - regularizer: []\n  - _self_\n{searchpath}",
    )
    _write(  # a second list entry must merge beside the first, not replace it
        tmp_path / "regularizer" / "qve_counterfactual.yaml",
        "qve_counterfactual:\n  _target_: causalneg.losses.QueryViewEntropy\n  weight: 0.01\n"
        "  generated_sources: [generated]\n",
    )
    _write(
        tmp_path / "experiment" / "entropy.yaml",
        "# @package _global_\ndefaults:\n  - override /regularizer: [query_view_entropy]\n",
    )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
            with_reg = compose("with_reg", overrides=["regularizer.query_view_entropy.weight=0.2"])
            plain = compose("plain")
            both = compose("plain", overrides=["regularizer=[query_view_entropy,qve_counterfactual]"])
            via_experiment = compose("plain", overrides=["+experiment=entropy"])
    finally:
        GlobalHydra.instance().clear()

    assert with_reg.loss.temperature == 0.05 and with_reg.loss.in_batch_negatives is False
    objective = build_objective(with_reg.loss, with_reg.regularizer)
    assert objective.weights == {"query_view_entropy": 0.2}
    reg = objective.regularizers["query_view_entropy"]
    assert isinstance(reg, QueryViewEntropy) and reg.temperature == 0.1
    assert isinstance(objective.infonce, InfoNCE) and objective.infonce.gather_across_devices is True

    assert build_objective(plain.loss, plain.get("regularizer")).weights == {}
    assert build_objective(plain.loss, None).weights == {}
    assert via_experiment.regularizer.query_view_entropy.weight == 0.05
    two = build_objective(both.loss, both.regularizer)
    assert two.weights == {"query_view_entropy": 0.05, "qve_counterfactual": 0.01}
    assert two.regularizers["qve_counterfactual"].generated_sources == ("generated",)


def test_build_objective_errors() -> None:
    loss = {"_target_": "causalneg.losses.InfoNCE"}
    with pytest.raises(ConfigError, match=r"regularizer\.qve"):
        build_objective(loss, {"qve": {"_target_": "causalneg.losses.QueryViewEntropy"}})
    with pytest.raises(ConfigError, match="InfoNCE"):
        build_objective({"_target_": "causalneg.losses.QueryViewEntropy"}, None)
    assert build_objective(loss, {"qve": None}).weights == {}


def test_distributed_helpers_without_a_process_group() -> None:
    from causalneg.losses.distributed import all_gather_no_grad, pad_dim1, world

    x = torch.randn(3, 2, 4, requires_grad=True)
    assert world() == (0, 1)
    assert all_gather_with_grad(x) is x and all_gather_no_grad(x) is x
    padded = pad_dim1(x, 5)
    assert padded.shape == (3, 5, 4) and torch.equal(padded[:, :2], x) and padded[:, 2:].abs().sum() == 0
    mask = pad_dim1(torch.ones(3, 2, dtype=torch.bool), 4, False)
    assert mask.dtype == torch.bool and mask.sum() == 6
    with pytest.raises(ValueError, match="pad"):
        pad_dim1(x, 1)
