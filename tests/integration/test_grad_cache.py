"""Gradient caching ≡ the plain step: the same loss and parameter gradients, in float64, dropout on and off.

A tiny random BERT (built in-process) in float64 trains on a batch with in-batch negatives, false-negative
masking, the query-view entropy regularizer, empty negative slots and a duplicated text. With dropout on, the
cached step must replay each chunk's RNG state; a control with the replay disabled must then differ.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from causalneg.data.batching import GroupCollator
from causalneg.errors import ConfigError
from causalneg.losses import InfoNCE, Objective, QueryViewEntropy, build_objective
from causalneg.losses.objective import grad_cache_chunk_size
from causalneg.models.encoder import DualEncoder, EncoderConfig
from causalneg.records import Negative, NegativeSource, Passage, Query, TrainingGroup
from causalneg.training import grad_cache
from causalneg.training.chunking import plan_chunks
from causalneg.training.system import RetrieverSystem

pytestmark = pytest.mark.integration

WORDS = ["lava", "magma", "orbit", "antenna", "bishop", "rook", "dough", "yeast", "reef", "algae"]
SLOTS = 3


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(n))


def make_groups() -> list[TrainingGroup]:
    groups = []
    for i in range(6):
        negatives = [
            Negative(text(i + 10, 2 + i), NegativeSource.MINED, passage_id=f"m{i}"),
            Negative(text(i + 20, 9 - i), NegativeSource.GENERATED),
        ]
        if i % 2 == 0:
            negatives.append(Negative(text(i + 30, 4), NegativeSource.MINED, passage_id=f"x{i}"))
        positive = Passage("d1" if i == 3 else f"d{i}", text(1 if i == 3 else i, 3 + 2 * i))  # 1, 3 share
        judged = (positive.id, "m0") if i == 5 else (positive.id,)  # query 5 judges query 0's negative
        groups.append(
            TrainingGroup(Query(f"q{i}", text(i + 40, 2 + i % 3)), positive, tuple(negatives), judged)
        )
    return groups


def make_encoder(dropout: bool) -> DualEncoder:
    p = 0.1 if dropout else 0.0
    tiny = {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}
    return DualEncoder.from_config(EncoderConfig(source="tiny", seed=5, tiny=tiny)).double()


def make_objective(guide_margin: float | None = None) -> Objective:
    regs = {"qve": QueryViewEntropy(temperature=0.1)}
    infonce = InfoNCE(temperature=0.05, in_batch_negatives=True, guide_margin=guide_margin)
    return Objective(infonce, regs, {"qve": 0.5})


def make_system(
    encoder: DualEncoder, chunk_size: int | None, chunk_tokens: int | None, guide: DualEncoder | None = None
) -> RetrieverSystem:
    system = RetrieverSystem(
        encoder,
        make_objective(0.0 if guide is not None else None),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        train_chunk_tokens=chunk_tokens,
        attention_dropout=None,  # keep the backbone's own (0.1 with dropout on)
        grad_cache_chunk_size=chunk_size,
        guide=guide,
    )
    return system.train()


def step(
    system: RetrieverSystem, batch: dict[str, torch.Tensor], seed: int
) -> tuple[torch.Tensor, list, dict]:
    """One loss + backward from a fixed RNG state: (loss, parameter gradients, objective parts)."""
    system.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, out, _ = system.compute_loss(batch)
    loss.backward()
    grads = [p.grad.detach().clone() if p.grad is not None else None for p in system.encoder.parameters()]
    return (
        loss.detach(),
        grads,
        {k: v.detach() for k, v in out.parts.items()} | {"rng": torch.get_rng_state()},
    )


def assert_same(a: tuple, b: tuple) -> None:
    loss_a, grads_a, parts_a = a
    loss_b, grads_b, parts_b = b
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-12)
    for key in parts_a:
        if key != "rng":
            torch.testing.assert_close(parts_a[key], parts_b[key], rtol=0, atol=1e-12)
    assert sum(g is not None for g in grads_a) > 10
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    encoder = make_encoder(False)
    out = GroupCollator(encoder.tokenize, SLOTS)(make_groups())
    assert (~out["neg_mask"]).any()  # empty slots are exercised
    return out


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 100])
def test_grad_cache_equals_plain_step_without_dropout(batch: dict, chunk_size: int) -> None:
    """Chunks differ from the plain step's (one forward per side): without dropout only rounding may differ."""
    encoder = make_encoder(False)
    plain = step(make_system(copy.deepcopy(encoder), None, None), batch, seed=0)
    cached = step(make_system(copy.deepcopy(encoder), chunk_size, None), batch, seed=0)
    assert_same(plain, cached)
    assert plain[2]["loss/reg/qve"] != 0 and torch.isfinite(plain[0])


@pytest.mark.parametrize("chunk_tokens", [24, 4096])
def test_grad_cache_replays_dropout_and_equals_plain_step(batch: dict, chunk_tokens: int) -> None:
    """With dropout, both steps cut the same chunks (train_chunk_tokens) and start from the same RNG state, so
    the first pass draws the plain step's masks; the re-encode must draw them again. The global RNG state
    after the step is the same too (the replay forks it)."""
    encoder = make_encoder(True)
    n_chunks = len(
        plan_chunks(batch["positive_input_ids"], batch["positive_attention_mask"], chunk_tokens).chunks
    )
    assert (n_chunks > 1) == (chunk_tokens == 24)
    plain = step(make_system(copy.deepcopy(encoder), None, chunk_tokens), batch, seed=7)
    cached = step(make_system(copy.deepcopy(encoder), 1000, chunk_tokens), batch, seed=7)
    assert_same(plain, cached)
    assert torch.equal(plain[2]["rng"], cached[2]["rng"])
    other_seed = step(make_system(copy.deepcopy(encoder), None, chunk_tokens), batch, seed=8)
    assert not torch.allclose(other_seed[0], plain[0])  # dropout is really on: another seed, another loss


def test_guide_masking_through_the_system_and_with_grad_cache(batch: dict) -> None:
    """A frozen guide (another tiny model) masks candidates: the parts differ from the unguided step, the
    guide stays frozen and in eval mode, and the cached step still equals the plain one (dropout on)."""
    encoder = make_encoder(True)
    guide = DualEncoder.from_config(EncoderConfig(source="tiny", seed=9)).double()
    plain = step(make_system(copy.deepcopy(encoder), None, 24, guide), batch, seed=3)
    cached = step(make_system(copy.deepcopy(encoder), 1000, 24, guide), batch, seed=3)
    assert_same(plain, cached)
    unguided = step(make_system(copy.deepcopy(encoder), None, 24), batch, seed=3)
    assert not torch.allclose(plain[0], unguided[0])
    system = make_system(copy.deepcopy(encoder), None, 24, guide)
    _, out, _ = system.compute_loss(batch)
    assert int(out.stats["masked/guide"]) > 0 and not guide.training
    assert all(p.grad is None and not p.requires_grad for p in guide.parameters())
    assert not any(name.startswith("_guide") for name in system.state_dict())  # not checkpointed


def test_without_rng_replay_the_gradients_differ(batch: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: re-encoding with fresh dropout masks gives the same loss value but wrong gradients."""

    @contextmanager
    def no_replay(self: grad_cache.RngState) -> Iterator[None]:
        yield

    encoder = make_encoder(True)
    plain = step(make_system(copy.deepcopy(encoder), None, 24), batch, seed=7)
    monkeypatch.setattr(grad_cache.RngState, "replay", no_replay)
    broken = step(make_system(copy.deepcopy(encoder), 1000, 24), batch, seed=7)
    torch.testing.assert_close(plain[0], broken[0], rtol=0, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(plain[1], broken[1], strict=True) if a is not None)


def test_lightning_fit_with_grad_cache_matches_plain_fit(batch: dict) -> None:
    """Through the Trainer (automatic optimization, float64, accumulation of 2 batches, clipping): the weights
    after two optimizer steps are the same with and without gradient caching, dropout on."""
    encoder = make_encoder(True)
    second = GroupCollator(encoder.tokenize, SLOTS)(make_groups()[::-1])
    batches = [batch, second, batch, second]

    def fit(chunk_size: int | None) -> list[torch.Tensor]:
        system = make_system(copy.deepcopy(encoder), chunk_size, 24)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=2,
            precision="64-true",
            accumulate_grad_batches=2,
            gradient_clip_val=0.05,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        torch.manual_seed(11)
        trainer.fit(system, train_dataloaders=DataLoader(batches, batch_size=None))
        return [p.detach().clone() for p in system.encoder.parameters()]

    start = [p.detach().clone() for p in encoder.parameters()]
    plain, cached = (
        fit(None),
        fit(1000),
    )  # the same (token-budget) chunks as the plain step: same dropout masks
    assert any(not torch.equal(a, b) for a, b in zip(start, plain, strict=True))  # training moved the weights
    for a, b in zip(plain, cached, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_grad_cache_config() -> None:
    loss = {"_target_": "causalneg.losses.InfoNCE", "grad_cache": {"chunk_size": 8}}
    assert grad_cache_chunk_size(loss) == 8 and isinstance(build_objective(loss).infonce, InfoNCE)
    assert grad_cache_chunk_size({"grad_cache": {"chunk_size": None}}) is None
    assert grad_cache_chunk_size({"_target_": "causalneg.losses.InfoNCE"}) is None
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ConfigError, match="chunk_size"):
            grad_cache_chunk_size({"grad_cache": {"chunk_size": bad}})
    with pytest.raises(ConfigError, match="chunk_size"):
        make_system(make_encoder(False), 0, None)


def test_grad_cache_equals_plain_step_with_multi_positive_groups() -> None:
    """data.positives=multi: extra positives ride in flagged slots after the negatives; the cached step still
    equals the plain one, and the multi-positive loss differs from the single-positive one."""
    groups = [
        replace(g, extra_positives=(Passage(f"e{i}", text(i + 50, 3)),) * (i % 3 != 0))
        for i, g in enumerate(make_groups())
    ]
    encoder = make_encoder(False)
    multi = GroupCollator(encoder.tokenize, SLOTS, 1)(groups)
    assert multi["pos_slot"].sum() == 4
    plain = step(make_system(copy.deepcopy(encoder), None, None), multi, seed=0)
    cached = step(make_system(copy.deepcopy(encoder), 2, None), multi, seed=0)
    assert_same(plain, cached)
    single = step(
        make_system(copy.deepcopy(encoder), None, None), GroupCollator(encoder.tokenize, SLOTS)(groups), 0
    )
    assert not torch.allclose(plain[0], single[0])
