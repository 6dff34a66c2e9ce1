"""Forward+backward time of the training objective: InfoNCE alone, + query-view entropy, and a per-query loop.

    python experiments/bench_loss.py [--repeats 200] [--warmup 20] [--threads 2] [--clock wall|thread] [--smoke]

Shapes follow the reference recipe (B=64 queries, Nm=15 mined + Ng=3 generated negatives) at D=384 (MiniLM)
and D=1024 (Qwen3-0.6B). In training the embeddings come from an encoder, so the loss is timed on leaf tensors
that require grad (their .grad is what the encoder's backward would receive). Variants are run round-robin
inside each repeat so that load from other processes hits all of them alike; tables give the median and the
minimum over repeats.
Targets: the regularizer adds <= 10% to InfoNCE's time; the batched entropy is >= 10x faster than the loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from causalneg.losses import InfoNCE, Objective, QueryViewEntropy
from causalneg.records import NegativeSource

B, NM, NG, TAU_ENT = 64, 15, 3, 0.1


def make_inputs(d: int, seed: int = 0) -> dict[str, Tensor]:
    """Leaves requiring grad; sources shuffled per row (the regularizer reads sources, not positions)."""
    g = torch.Generator().manual_seed(seed)
    k = NM + NG
    source = torch.tensor([int(NegativeSource.MINED)] * NM + [int(NegativeSource.GENERATED)] * NG)
    perm = torch.argsort(torch.rand(B, k, generator=g), dim=1)
    mask = torch.ones(B, k, dtype=torch.bool)
    mask[: B // 8, -1] = False  # a little padding, as collation produces
    return {
        "q": F.normalize(torch.randn(B, d, generator=g), dim=-1).requires_grad_(True),
        "p": F.normalize(torch.randn(B, d, generator=g), dim=-1).requires_grad_(True),
        "n": F.normalize(torch.randn(B, k, d, generator=g), dim=-1).requires_grad_(True),
        "neg_source": source[perm],
        "neg_mask": mask,
    }


def entropy_loop(q: Tensor, n: Tensor, neg_source: Tensor, neg_mask: Tensor) -> Tensor:
    """The reference implementation's structure: one query at a time, autograd through every op."""
    losses = []
    for i in range(q.shape[0]):
        valid = neg_mask[i]
        is_gen = (neg_source[i] == int(NegativeSource.GENERATED))[valid]
        if not bool(is_gen.any()):
            continue
        d = n[i][valid]
        d = torch.where(is_gen[:, None], d, d.detach())  # mined negatives: stop-gradient
        prob = torch.softmax(d @ q[i].detach() / TAU_ENT, dim=0)
        p_gen = prob[is_gen]
        mass = p_gen.sum()
        p_tilde = p_gen / mass
        h_gen = -(p_tilde * p_tilde.log()).sum()
        share = is_gen.sum() / valid.sum()
        losses.append(-h_gen + (mass - share) ** 2)
    return torch.stack(losses).mean()


def variants() -> dict[str, Callable[[dict[str, Tensor]], Tensor]]:
    infonce = InfoNCE(temperature=0.05)
    objective = Objective(InfoNCE(temperature=0.05), {"qve": QueryViewEntropy(TAU_ENT)}, {"qve": 0.05})
    entropy = QueryViewEntropy(TAU_ENT)
    return {
        "infonce": lambda x: infonce(x["q"], x["p"], x["n"], x["neg_mask"]),
        "infonce+entropy": lambda x: objective(**x).loss,
        "entropy (batched)": lambda x: entropy(**x).value,
        "entropy (loop)": lambda x: entropy_loop(x["q"], x["n"], x["neg_source"], x["neg_mask"]),
    }


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def time_all(d: int, repeats: int, warmup: int, clock: Callable[[], float]) -> dict[str, list[float]]:
    """Seconds of forward+backward per variant, one entry per repeat (the loop: every 4th repeat only)."""
    x = make_inputs(d)
    fns = variants()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for it in range(warmup + repeats):
        for name, fn in fns.items():
            if name == "entropy (loop)" and it % 4:
                continue  # 20-50x slower than the rest; fewer samples suffice
            for key in ("q", "p", "n"):
                x[key].grad = None
            start = clock()
            fn(x).backward()
            elapsed = clock() - start
            if it >= warmup:
                times[name].append(elapsed)
    return times


def print_table(
    results: dict[int, dict[str, list[float]]], stat: str, reduce: Callable[[list[float]], float]
) -> None:
    header = [
        "D",
        "infonce",
        "infonce+entropy",
        "entropy batched",
        "entropy loop",
        "reg. overhead",
        "loop/batched",
    ]
    print(f"\n{stat} forward+backward time, ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    for d, times in results.items():
        t = {name: reduce(ts) for name, ts in times.items()}
        overhead = 100 * (t["infonce+entropy"] / t["infonce"] - 1)
        speedup = t["entropy (loop)"] / t["entropy (batched)"]
        cells = [
            f"{1e3 * t[k]:.3f}" for k in ("infonce", "infonce+entropy", "entropy (batched)", "entropy (loop)")
        ]
        print(f"| {d} | " + " | ".join(cells) + f" | {overhead:+.1f}% | {speedup:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: perf_counter; thread: CPU time of the calling thread (robust to other processes' load, "
        "meaningful only with --threads 1, where all of the loss's work runs in that thread)",
    )
    parser.add_argument("--smoke", action="store_true", help="CI: 4 repeats after 1 warm-up, 1 thread")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.warmup, args.threads = 4, 1, 1  # the loop runs every 4th repeat: once
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}; B={B}, Nm={NM}, Ng={NG}, fp32; {args.clock} clock; "
        f"{args.repeats} repeats after {args.warmup} warm-up"
    )
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread counts only the calling thread: use it with --threads 1")
    results = {d: time_all(d, args.repeats, args.warmup, CLOCKS[args.clock]) for d in (384, 1024)}
    print_table(results, "median", statistics.median)
    print_table(results, "min (least disturbed by other processes)", min)


if __name__ == "__main__":
    main()
