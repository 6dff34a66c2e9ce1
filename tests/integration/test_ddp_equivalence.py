"""DDP with cross-device in-batch negatives ≡ one process on the concatenated batch (2 gloo ranks on CPU).

Each rank encodes its half of the batch with a tiny ``nn.Linear`` wrapped in DistributedDataParallel, computes
the objective (InfoNCE with gathered in-batch negatives, optionally + query-view entropy) and backpropagates.
The mean of the two rank losses and DDP's averaged parameter gradients must equal the loss and gradients of a
single process on the whole batch. The ranks hold different K (rank 1's extra slots are padding in the
single-process batch) and different numbers of queries with generated negatives, so the padding in the gather
and the entropy's cross-rank normalisation are both exercised. The masking case has judged positives of a
query on the other rank (a duplicate positive, another query's positive, another query's negative). The
multi-positive case flags extra-positive slots on both ranks (``pos_slot``), whose columns in the gathered
candidates depend on the rank offset and the padded K.
"""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from causalneg.losses import InfoNCE, Objective, QueryViewEntropy
from causalneg.losses.masking import NO_KEY, PassageKeys
from causalneg.records import NegativeSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WORLD, B, K, K_RANK1, D_IN, D = 2, 8, 6, 4, 10, 5
CASES = {  # name -> (in_batch_negatives, entropy weight, false-negative masking, extra positives)
    "in_batch": (True, 0.0, False, False),
    "in_batch+entropy": (True, 0.5, False, False),
    "own_negatives+entropy": (False, 0.5, False, False),
    "in_batch+masking": (True, 0.0, True, False),
    "in_batch+masking+multi": (True, 0.5, True, True),
}


def make_data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    source = torch.full((B, K), int(NegativeSource.MINED))
    source[[0, 1, 2], 4] = int(NegativeSource.GENERATED)  # rank 0 (rows 0-3): three queries with G
    source[[1, 2], 5] = int(NegativeSource.NAIVE_GENERATED)
    source[5, [1, 3]] = int(NegativeSource.GENERATED)  # rank 1 (rows 4-7): one query with G
    mask = torch.rand(B, K, generator=g) > 0.2
    mask[[0, 1, 2], 4] = True
    mask[B // 2 :, K_RANK1:] = False  # rank 1 only has K_RANK1 slots
    mask[5, [1, 3]] = True
    positive_key = torch.arange(B) + 100
    positive_key[5] = positive_key[1]  # the same positive on both ranks
    neg_key = torch.full((B, K), NO_KEY)
    neg_key[:, :3] = torch.arange(B * 3).view(B, 3) + 1000
    judged_key = torch.full((B, 2), NO_KEY)
    judged_key[:, 0] = positive_key
    judged_key[0, 1] = positive_key[6]  # query 0 (rank 0) judges query 6's positive (rank 1)
    judged_key[6, 1] = neg_key[2, 0]  # query 6 (rank 1) judges a negative of query 2 (rank 0)
    pos_slot = torch.zeros(B, K, dtype=torch.bool)
    pos_slot[[1, 3, 6, 7], [3, 5, 2, 3]] = True  # extra positives on both ranks (rank 1 within its K_RANK1)
    return {
        "pos_slot": pos_slot,
        "positive_key": positive_key,
        "neg_key": neg_key,
        "judged_key": judged_key,
        "xq": torch.randn(B, D_IN, generator=g, dtype=torch.float64),
        "xp": torch.randn(B, D_IN, generator=g, dtype=torch.float64),
        "xn": torch.randn(B, K, D_IN, generator=g, dtype=torch.float64),
        "source": source,
        "mask": mask & ~pos_slot,  # as collated: an extra positive's slot is not a negative
    }


def make_encoder() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(D_IN, D).double()


def forward(
    encoder: nn.Module, data: dict[str, Tensor], in_batch: bool, weight: float, masking: bool, multi: bool
) -> tuple[Tensor, Tensor]:
    """Encode (one forward call, as DDP expects) and compute the objective. Returns (loss, entropy)."""
    b, k = data["xn"].shape[:2]
    x = torch.cat([data["xq"], data["xp"], data["xn"].reshape(b * k, D_IN)])
    emb = F.normalize(encoder(x), dim=-1)
    q, p, n = emb[:b], emb[b : 2 * b], emb[2 * b :].reshape(b, k, D)
    regs = {"qve": QueryViewEntropy(temperature=0.1)} if weight else {}
    objective = Objective(
        InfoNCE(temperature=0.05, in_batch_negatives=in_batch), regs, {"qve": weight} if weight else {}
    )
    keys = PassageKeys.from_batch(data) if masking else None
    out = objective(q, p, n, data["source"], data["mask"], keys, pos_slot=data["pos_slot"] if multi else None)
    if masking:
        assert out.stats["masked/judged_positive"] > 0
    return out.loss, out.parts.get("loss/reg/qve", torch.zeros(()))


def step(
    encoder: nn.Module, data: dict[str, Tensor], in_batch: bool, weight: float, masking: bool, multi: bool
) -> tuple[Tensor, Tensor]:
    """:func:`forward`, then backward. Returns (loss, entropy), detached."""
    loss, entropy = forward(encoder, data, in_batch, weight, masking, multi)
    loss.backward()
    return loss.detach(), entropy.detach()


def local_half(data: dict[str, Tensor], rank: int) -> dict[str, Tensor]:
    rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    k = K if rank == 0 else K_RANK1
    per_negative = {
        "xn",
        "source",
        "mask",
        "neg_key",
        "pos_slot",
    }  # [B, K, ...]: rank 1 keeps only its K_RANK1 slots
    return {key: v[rows, :k] if key in per_negative else v[rows] for key, v in data.items()}


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        data = local_half(make_data(), rank)
        results = {}
        for name, (in_batch, weight, masking, multi) in CASES.items():
            model = DistributedDataParallel(make_encoder())
            loss, entropy = step(model, data, in_batch, weight, masking, multi)
            grads = [p.grad.detach().clone() for p in model.module.parameters()]
            results[name] = {"loss": loss, "entropy": entropy, "grads": grads}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, (in_batch, weight, masking, multi) in CASES.items():
        encoder = make_encoder()
        loss, entropy = step(encoder, make_data(), in_batch, weight, masking, multi)
        ddp_loss = sum(r[name]["loss"] for r in ranks) / WORLD
        assert torch.allclose(ddp_loss, loss, atol=1e-5, rtol=0), (name, ddp_loss, loss)
        if weight:
            ddp_entropy = sum(r[name]["entropy"] for r in ranks) / WORLD
            assert torch.allclose(ddp_entropy, entropy, atol=1e-5, rtol=0), (name, ddp_entropy, entropy)
        for single, g0, g1 in zip(
            encoder.parameters(), ranks[0][name]["grads"], ranks[1][name]["grads"], strict=True
        ):
            assert torch.equal(g0, g1), name  # DDP synchronised the gradients
            assert torch.allclose(g0, single.grad, atol=1e-5, rtol=0), (name, (g0 - single.grad).abs().max())
