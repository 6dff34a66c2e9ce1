"""False-negative masking: which candidates of a query are its own judged positives (by passage id).

A batch carries passage ids as int64 *keys* (a stable 63-bit hash of the id, see
:func:`causalneg.data.batching.passage_key`), so that candidates from every rank can be compared after an
all-gather without exchanging strings. Key ``-1`` means "no passage id" (generated text, empty slot, padding)
and never matches. Two different ids share a key with probability about :math:`2^{-63}` per pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

NO_KEY = -1


@dataclass(frozen=True)
class PassageKeys:
    """Passage keys of a batch. ``positive`` [B]: key of each query's positive; ``negatives`` [B, K]: key of
    each negative slot (``NO_KEY`` for generated text and empty slots); ``judged`` [B, J]: keys of every
    passage the qrels judge relevant (score > 0) for the query, padded with ``NO_KEY``."""

    positive: Tensor
    negatives: Tensor
    judged: Tensor

    @classmethod
    def from_batch(cls, batch: Mapping[str, Tensor]) -> PassageKeys | None:
        """The keys of a collated batch (``positive_key``, ``neg_key``, ``judged_key``), or None without them."""
        if "positive_key" not in batch:
            return None
        return cls(batch["positive_key"], batch["neg_key"], batch["judged_key"])

    def check(self, b: int, k: int) -> None:
        """Raise ``ValueError`` unless the shapes match a batch of ``b`` queries and ``k`` negative slots."""
        if self.positive.shape != (b,) or self.negatives.shape != (b, k) or self.judged.dim() != 2:
            raise ValueError(
                f"passage keys must be positive [B], negatives [B, K], judged [B, J] with B={b}, K={k}; got "
                f"{tuple(self.positive.shape)}, {tuple(self.negatives.shape)}, {tuple(self.judged.shape)}"
            )
        if self.judged.shape[0] != b:
            raise ValueError(f"passage keys judged must have B={b} rows; got {tuple(self.judged.shape)}")


def judged_positive_mask(candidates: Tensor, judged: Tensor, positive: Tensor) -> Tensor:
    r"""``[B, C]`` bool: candidate ``c`` is a judged positive of query ``i``.

    True where ``candidates[c]`` (a key, [C]) equals one of ``judged[i]`` ([B, J]) or the query's own
    positive ``positive[i]`` ([B]; a copy of it elsewhere in the batch is a false negative too) and is not
    ``NO_KEY``. The caller unmasks the query's own positive column. Computed with ``torch.isin`` on
    (row, key) pair codes: memory O(B·C + B·J), not O(B·C·J).
    """
    b, c = judged.shape[0], candidates.shape[0]
    own = torch.cat([judged, positive[:, None]], dim=1)  # [B, J+1]
    codes, inverse = torch.unique(torch.cat([candidates, own.flatten()]), return_inverse=True)
    width = codes.numel()
    rows = torch.arange(b, device=candidates.device)[:, None]  # [B, 1]
    cand_pairs = rows * width + inverse[:c][None, :]  # [B, C]
    own_pairs = (rows * width + inverse[c:].view(b, -1))[own != NO_KEY]  # [P]
    return torch.isin(cand_pairs, own_pairs) & (candidates != NO_KEY)[None, :]
