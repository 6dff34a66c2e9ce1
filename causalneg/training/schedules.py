"""Learning-rate schedules as factories ``(optimizer, total_steps) -> LRScheduler`` (config: ``_partial_: true``)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_decay(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """lr(t) = lr0 * t / W for t < W, then lr0 * (T - t) / (T - W), with W = ceil(warmup_ratio * T)."""
    total = max(1, int(total_steps))
    warmup = min(total - 1, max(0, round(warmup_ratio * total))) if total > 1 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return LambdaLR(optimizer, factor)
