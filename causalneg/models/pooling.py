"""Pooling of token states into one vector per text.

All functions take ``hidden [B, T, H]`` and ``attention_mask [B, T]`` (1 = real token, 0 = padding; either
padding side) and return ``[B, H]``. Pooling runs in at least float32 (also when the backbone ran under bf16
autocast); a float64 backbone pools in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLING_MODES = ("mean", "cls", "last_token")


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Masked mean ``sum_t m_t h_t / max(sum_t m_t, 1e-9)``; an all-padding row gives zeros."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    summed = (hidden * mask).sum(dim=1)  # [B, H]
    counts = mask.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    return summed / counts


def cls_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """State of the first real token (``[CLS]`` for BERT), found from the mask so left padding works."""
    first = attention_mask.to(torch.int64).argmax(dim=1)  # [B]: argmax returns the first maximal index
    return hidden[torch.arange(hidden.size(0), device=hidden.device), first]


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """State of the last real token (decoder-style embedders); correct for left and right padding.

    The last real position is ``T - 1 - argmax(flip(mask))``: the first 1 seen from the right.
    """
    seq_len = attention_mask.size(1)
    last = seq_len - 1 - attention_mask.to(torch.int64).flip(dims=[1]).argmax(dim=1)  # [B]
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def pool(mode: str, hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Dispatch on ``mode`` (:data:`POOLING_MODES`); ``hidden [B, T, H]`` -> ``[B, H]`` in float32 (float64 for
    a float64 ``hidden``)."""
    hidden = hidden.float() if hidden.dtype in (torch.float16, torch.bfloat16) else hidden
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "cls":
        return cls_pool(hidden, attention_mask)
    if mode == "last_token":
        return last_token_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING_MODES}")
