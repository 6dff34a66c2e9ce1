"""Samplers, datasets and collation that turn query pools into tokenized training batches.

A batch is a dict of tensors (B queries, K = GroupSpec.total slots: the negative slots, then, with
``data.positives=multi``, the extra-positive slots; L* token lengths):
    query_input_ids / query_attention_mask          [B, Lq]
    positive_input_ids / positive_attention_mask    [B, Ld]
    negative_input_ids / negative_attention_mask    [M, Ln]  (only the M filled slots' texts, row-major)
    neg_index   [B, K] long: row in the flattened slot texts, -1 for an empty slot
    neg_source  [B, K] long: NegativeSource value (MINED for empty and positive slots; masked anyway)
    neg_mask    [B, K] bool: True where a real negative sits (False for an extra positive: every consumer
                that reads only negatives, regularizers and diagnostics, sees it as padding)
    pos_slot    [B, K] bool: True where an extra positive of the query sits (only InfoNCE reads it)
    positive_key [B] long, neg_key [B, K] long, judged_key [B, J] long: passage keys (:func:`passage_key`) of
                the positive, of each negative slot and of every passage judged relevant for the query
                (``NO_KEY`` = -1 for generated text, empty slots and padding): false-negative masking
Padding is dynamic (to the longest text in the batch), never to the configured max length.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Sampler

from causalneg.artifacts import fingerprint
from causalneg.data.groups import GroupSpec, QueryPool, sample_group
from causalneg.losses.masking import NO_KEY
from causalneg.records import NegativeSource, Passage, TrainingGroup

Side = Literal["query", "doc"]
Tokenize = Callable[
    [Sequence[str], Side], Any
]  # (texts, side) -> BatchEncoding with input_ids / attention_mask


def passage_key(passage_id: str) -> int:
    """A passage id as a stable non-negative int64: the first 8 bytes of its BLAKE2b hash, top bit cleared.

    The same in every process and rank (unlike Python's ``hash``), so keys can be compared after a gather."""
    digest = hashlib.blake2b(passage_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochGroupSampler(Sampler[tuple[int, int]]):
    """Yields ``(pool index, epoch)``: a seeded permutation per epoch, sharded across ranks.

    Lightning calls ``set_epoch`` before each epoch; the epoch travels with each index so dataset workers need no
    shared state. Under DDP each rank takes every world_size-th index of the same permutation (the tail is
    dropped so ranks see equal counts); set ``use_distributed_sampler: false`` in the trainer.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(fingerprint(["order", self.seed, self.epoch])).shuffle(order)
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = _dist_rank_world()
        order = self._order()
        usable = len(order) - len(order) % world
        return iter((index, self.epoch) for index in order[rank:usable:world])

    def __len__(self) -> int:
        _, world = _dist_rank_world()
        return self.size // world


class GroupDataset(Dataset[TrainingGroup]):
    """Maps ``(pool index, epoch)`` to a freshly sampled TrainingGroup."""

    def __init__(
        self, pools: Sequence[QueryPool], spec: GroupSpec, seed: int, random_pool: Sequence[Passage] = ()
    ) -> None:
        self.pools, self.spec, self.seed, self.random_pool = list(pools), spec, seed, list(random_pool)

    def __len__(self) -> int:
        return len(self.pools)

    def __getitem__(self, key: tuple[int, int] | int) -> TrainingGroup:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        return sample_group(self.pools[index], self.spec, self.seed, epoch, self.random_pool)


class GroupCollator:
    """Tokenizes a list of TrainingGroups into the batch layout documented in this module: ``slots`` negative
    slots, then ``positive_slots`` slots for a multi-positive group's extra positives."""

    def __init__(self, tokenize: Tokenize, slots: int, positive_slots: int = 0) -> None:
        self.tokenize, self.slots, self.positive_slots = tokenize, slots, positive_slots

    def __call__(self, groups: list[TrainingGroup]) -> dict[str, torch.Tensor]:
        queries = self.tokenize([g.query.text for g in groups], "query")
        positives = self.tokenize([g.positive.full_text for g in groups], "doc")
        shape = (len(groups), self.slots + self.positive_slots)
        neg_index = torch.full(shape, -1, dtype=torch.long)
        neg_source = torch.full(shape, int(NegativeSource.MINED), dtype=torch.long)
        neg_key = torch.full(shape, NO_KEY, dtype=torch.long)
        pos_slot = torch.zeros(shape, dtype=torch.bool)
        judged = [g.judged_ids or (g.positive.id,) for g in groups]
        judged_key = torch.full((len(groups), max(map(len, judged))), NO_KEY, dtype=torch.long)
        texts: list[str] = []
        for i, group in enumerate(groups):
            judged_key[i, : len(judged[i])] = torch.tensor([passage_key(pid) for pid in judged[i]])
            for j, negative in enumerate(group.negatives[: self.slots]):
                neg_index[i, j] = len(texts)
                neg_source[i, j] = int(negative.source)
                if negative.passage_id is not None:
                    neg_key[i, j] = passage_key(negative.passage_id)
                texts.append(negative.text)
            for j, extra in enumerate(group.extra_positives[: self.positive_slots], start=self.slots):
                neg_index[i, j], pos_slot[i, j], neg_key[i, j] = len(texts), True, passage_key(extra.id)
                texts.append(extra.full_text)
        batch = {
            "query_input_ids": queries["input_ids"],
            "query_attention_mask": queries["attention_mask"],
            "positive_input_ids": positives["input_ids"],
            "positive_attention_mask": positives["attention_mask"],
            "neg_index": neg_index,
            "neg_source": neg_source,
            "neg_mask": (neg_index >= 0) & ~pos_slot,
            "pos_slot": pos_slot,
            "positive_key": torch.tensor([passage_key(g.positive.id) for g in groups], dtype=torch.long),
            "neg_key": neg_key,
            "judged_key": judged_key,
        }
        if texts:
            negatives = self.tokenize(texts, "doc")
            batch["negative_input_ids"] = negatives["input_ids"]
            batch["negative_attention_mask"] = negatives["attention_mask"]
        return batch


class QueryTextDataset(Dataset[tuple[str, str]]):
    """(query id, query text) pairs for validation: the LightningModule ranks a fixed dev sub-corpus."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, str]:
        return self.items[index]


class QueryCollator:
    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def __call__(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        encoded = self.tokenize([text for _, text in items], "query")
        return {
            "query_ids": [qid for qid, _ in items],
            "query_input_ids": encoded["input_ids"],
            "query_attention_mask": encoded["attention_mask"],
        }
