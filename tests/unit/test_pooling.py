"""Pooling on hand-built tensors: masked mean, first real token, last real token under both padding sides."""

from __future__ import annotations

import pytest
import torch

from causalneg.models.pooling import POOLING_MODES, cls_pool, last_token_pool, mean_pool, pool


def _hidden() -> torch.Tensor:
    # [B=2, T=4, H=2]: token t of row b has state (10*b + t, -(10*b + t))
    values = torch.tensor([[0.0, 1, 2, 3], [10, 11, 12, 13]])
    return torch.stack([values, -values], dim=-1)


RIGHT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
LEFT = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])


def test_mean_pool_ignores_padding() -> None:
    out = mean_pool(_hidden(), RIGHT)
    assert torch.allclose(out, torch.tensor([[1.0, -1.0], [10.5, -10.5]]))
    out_left = mean_pool(_hidden(), LEFT)
    assert torch.allclose(out_left, torch.tensor([[2.0, -2.0], [12.5, -12.5]]))


def test_mean_pool_all_padding_row_is_zero() -> None:
    out = mean_pool(_hidden(), torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]]))
    assert torch.equal(out[0], torch.zeros(2))
    assert torch.allclose(out[1], torch.tensor([10.0, -10.0]))


@pytest.mark.parametrize(("mask", "expected"), [(RIGHT, [0.0, 10.0]), (LEFT, [1.0, 12.0])])
def test_cls_pool_takes_first_real_token(mask: torch.Tensor, expected: list[float]) -> None:
    assert cls_pool(_hidden(), mask)[:, 0].tolist() == expected


@pytest.mark.parametrize(("mask", "expected"), [(RIGHT, [2.0, 11.0]), (LEFT, [3.0, 13.0])])
def test_last_token_pool_takes_last_real_token(mask: torch.Tensor, expected: list[float]) -> None:
    assert last_token_pool(_hidden(), mask)[:, 0].tolist() == expected


def test_last_token_pool_without_padding_is_last_position() -> None:
    assert last_token_pool(_hidden(), torch.ones(2, 4, dtype=torch.long))[:, 0].tolist() == [3.0, 13.0]


def test_pool_dispatch_returns_float32_and_rejects_unknown() -> None:
    hidden = _hidden().to(torch.bfloat16)
    for mode in POOLING_MODES:
        out = pool(mode, hidden, RIGHT)
        assert out.dtype == torch.float32 and out.shape == (2, 2)
        assert pool(mode, hidden.double(), RIGHT).dtype == torch.float64  # float64 tests stay float64
    with pytest.raises(ValueError, match="unknown pooling"):
        pool("max", hidden, RIGHT)
