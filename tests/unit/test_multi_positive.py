"""Graded, multi-positive training data and the multi-positive InfoNCE.

The multi-positive loss must (1) equal plain InfoNCE when each query has one positive, (2) equal a per-query
reference loop (each positive against the unmasked non-positive candidates, mean over positives), own and
in-batch candidates alike, values and gradients in float64, and (3) equal the mean of the plain losses of the
query's (query, positive) pairs when there are no in-batch negatives.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from causalneg.data.batching import GroupCollator, passage_key
from causalneg.data.groups import GroupSpec, build_pools, expand_pairs, sample_group
from causalneg.data.mining.filters import FilterConfig, RankedCandidates, filter_candidates
from causalneg.errors import ConfigError
from causalneg.losses import InfoNCE
from causalneg.losses.infonce import multi_positive_loss
from causalneg.losses.masking import NO_KEY, PassageKeys
from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit

B, K, D = 5, 5, 8
TAU = 0.07


def embeddings(seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "q": F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1).requires_grad_(),
        "p": F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1).requires_grad_(),
        "n": F.normalize(torch.randn(B, K, D, generator=g, dtype=torch.float64), dim=-1).requires_grad_(),
    }


def slots() -> tuple[Tensor, Tensor]:
    """``neg_mask`` and ``pos_slot`` [B, K]: slots 0-2 negatives, 3-4 extra positives (some empty)."""
    neg_mask = torch.ones(B, K, dtype=torch.bool)
    neg_mask[:, 3:] = False
    neg_mask[4, 2] = False  # a padded negative
    pos_slot = torch.zeros(B, K, dtype=torch.bool)
    pos_slot[0, 3:] = True  # two extra positives
    pos_slot[2, 3] = True  # one
    return neg_mask, pos_slot  # queries 1, 3, 4: a single positive


def grads(loss: Tensor, emb: dict[str, Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, [emb["q"], emb["p"], emb["n"]]))


def reference(emb: dict[str, Tensor], neg_mask: Tensor, pos_slot: Tensor, in_batch: bool) -> Tensor:
    """Per query: its positives (p_i and flagged slots) each against every other valid candidate that is not a
    positive of the query, -log of e^s_p / (e^s_p + sum e^s_c), mean over positives, then over queries."""
    q, p, n = emb["q"], emb["p"], emb["n"]
    losses = []
    for i in range(B):
        own_pos = [p[i]] + [n[i, k] for k in range(K) if pos_slot[i, k]]
        cands = [n[i, k] for k in range(K) if neg_mask[i, k]]
        if in_batch:
            for j in range(B):
                if j != i:
                    cands += [p[j]] + [n[j, k] for k in range(K) if neg_mask[j, k] or pos_slot[j, k]]
        neg = torch.stack([q[i] @ c / TAU for c in cands])
        terms = [
            -(q[i] @ x / TAU) + torch.logsumexp(torch.cat([(q[i] @ x / TAU)[None], neg]), 0) for x in own_pos
        ]
        losses.append(torch.stack(terms).mean())
    return torch.stack(losses).mean()


def test_multi_positive_loss_with_one_positive_is_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=g, dtype=torch.float64)
    logits[1, 5] = float("-inf")  # a masked column
    logits.requires_grad_()
    labels = torch.tensor([0, 3, 6, 2])
    one = F.one_hot(labels, 7).bool()
    ours, plain = multi_positive_loss(logits, one), F.cross_entropy(logits, labels)
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours, logits)[0], torch.autograd.grad(plain, logits)[0], rtol=1e-12, atol=1e-12
    )


def test_infonce_with_pos_slot_but_one_positive_equals_plain() -> None:
    emb = embeddings(1)
    neg_mask, _ = slots()
    none = torch.zeros(B, K, dtype=torch.bool)
    for in_batch in (False, True):
        loss = InfoNCE(TAU, in_batch_negatives=in_batch)
        a, b = loss(emb["q"], emb["p"], emb["n"], neg_mask, pos_slot=none), loss(*emb.values(), neg_mask)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("in_batch", [False, True])
def test_multi_positive_infonce_equals_reference_loop(in_batch: bool) -> None:
    emb = embeddings(2)
    neg_mask, pos_slot = slots()
    ours = InfoNCE(TAU, in_batch_negatives=in_batch)(
        emb["q"], emb["p"], emb["n"], neg_mask, pos_slot=pos_slot
    )
    ref = reference(emb, neg_mask, pos_slot, in_batch)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads(ours, emb), grads(ref, emb), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_multi_positive_equals_mean_of_pairs_without_in_batch() -> None:
    """Query 0 with positives p0, n[0,3], n[0,4]: its loss is the mean of the three plain pair losses."""
    emb = embeddings(3)
    neg_mask, pos_slot = slots()
    q, p, n = (t.detach() for t in emb.values())
    multi = InfoNCE(TAU)(q[:1], p[:1], n[:1], neg_mask[:1], pos_slot=pos_slot[:1])
    pairs = [InfoNCE(TAU)(q[:1], x[None], n[:1, :3], neg_mask[:1, :3]) for x in (p[0], n[0, 3], n[0, 4])]
    torch.testing.assert_close(multi, torch.stack(pairs).mean(), rtol=1e-12, atol=1e-12)


def test_extra_positive_of_the_query_is_never_masked_but_another_querys_judged_one_is() -> None:
    emb = embeddings(4)
    neg_mask, pos_slot = slots()
    ids = [[f"n{i}-{k}" for k in range(K)] for i in range(B)]
    judged = [[f"p{i}"] + [ids[i][k] for k in range(K) if pos_slot[i, k]] for i in range(B)]
    judged[1].append(ids[0][3])  # query 0's extra positive also answers query 1
    width = max(map(len, judged))
    judged_key = torch.full((B, width), NO_KEY)
    for i, row in enumerate(judged):
        judged_key[i, : len(row)] = torch.tensor([passage_key(x) for x in row])
    keys = PassageKeys(
        torch.tensor([passage_key(f"p{i}") for i in range(B)]),
        torch.tensor([[passage_key(x) for x in row] for row in ids]),
        judged_key,
    )
    _, stats = InfoNCE(TAU, in_batch_negatives=True).loss_and_stats(
        emb["q"], emb["p"], emb["n"], neg_mask, keys, pos_slot=pos_slot
    )
    assert int(stats["masked/judged_positive"]) == 1  # query 1 x query 0's extra positive, nothing else


def graded_dataset() -> RetrievalDataset:
    corpus = {f"d{i}": Passage(f"d{i}", f"text {i}") for i in range(6)}
    qrels = {"q0": {"d0": 1, "d1": 2, "d2": 1, "d5": 0}, "q1": {"d3": 1}}
    split = RetrievalSplit({"q0": Query("q0", "a"), "q1": Query("q1", "b")}, qrels)
    return RetrievalDataset("t", corpus, {"train": split})


def test_pools_rank_positives_by_grade_and_honour_min_grade() -> None:
    ds = graded_dataset()
    mined = {"q0": [("d2", 0.9), ("d4", 0.5), ("d5", 0.4)], "q1": [("d0", 0.3)]}
    pools = build_pools(ds, "train", ["q0", "q1"], mined)
    assert [p.id for p in pools[0].positives] == ["d1", "d0", "d2"]  # grade 2 first, then by id
    assert [n.passage_id for n in pools[0].mined] == [
        "d4",
        "d5",
    ]  # a judged passage is no negative; grade 0 is
    graded = build_pools(ds, "train", ["q0", "q1"], mined, min_grade=2)
    assert [p.id for p in graded[0].positives] == ["d1"] and len(graded) == 1  # q1 has no grade-2 positive
    assert graded[0].judged_ids == ("d0", "d1", "d2")  # lower grades are still masked in the loss
    assert [n.passage_id for n in graded[0].mined] == ["d4", "d5"]


def test_multi_groups_collate_extra_positives_into_flagged_slots() -> None:
    pools = build_pools(graded_dataset(), "train", ["q0", "q1"], {"q0": [("d4", 0.5)], "q1": [("d4", 0.1)]})
    spec = GroupSpec(num_mined=2, positives="multi", max_positives=3, positive_selection="first")
    groups = [sample_group(pool, spec, seed=0, epoch=0) for pool in pools]
    assert groups[0].positive.id == "d1" and [p.id for p in groups[0].extra_positives] == ["d0", "d2"]

    def tokenize(texts: list[str], side: str) -> dict[str, Tensor]:
        return {
            "input_ids": torch.ones(len(texts), 2, dtype=torch.long),
            "attention_mask": torch.ones(len(texts), 2),
        }

    batch = GroupCollator(tokenize, spec.negative_slots, spec.extra_positive_slots)(groups)
    assert spec.total == 4
    assert batch["neg_mask"].tolist() == [[True, False, False, False], [True, False, False, False]]
    assert batch["pos_slot"].tolist() == [[False, False, True, True], [False, False, False, False]]
    assert batch["neg_key"][0, 2:].tolist() == [passage_key("d0"), passage_key("d2")]
    assert batch["neg_index"].tolist() == [[0, -1, 1, 2], [3, -1, -1, -1]]


def test_pairs_expand_one_pool_per_positive() -> None:
    pools = expand_pairs(build_pools(graded_dataset(), "train", ["q0", "q1"]))
    assert [(p.query.id, p.positives[0].id) for p in pools] == [
        ("q0", "d1"),
        ("q0", "d0"),
        ("q0", "d2"),
        ("q1", "d3"),
    ]
    assert all(p.judged_ids == ("d0", "d1", "d2") for p in pools[:3])


def test_bad_positive_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.positives"):
        GroupSpec(positives="all")
    with pytest.raises(ConfigError, match=r"data\.max_positives"):
        GroupSpec(min_grade=0)


def test_margin_against_the_best_graded_positive() -> None:
    """A grade-1 positive scored above the grade-2 one sets the bar under max, not under best_graded."""
    ranked = RankedCandidates(
        "q",
        ("hi", "lo"),
        (("a", 0.9), ("b", 0.7), ("c", 0.5)),
        positive_scores={"hi": 0.6, "lo": 1.0},
        positive_grades={"hi": 2, "lo": 1},
    )
    kept_max, _ = filter_candidates(ranked, FilterConfig(relative_margin=0.95, positive_score="max"))
    kept_best, skipped = filter_candidates(
        ranked, FilterConfig(relative_margin=0.95, positive_score="best_graded")
    )
    assert [c.id for c in kept_max] == ["a", "b", "c"]
    assert [c.id for c in kept_best] == ["c"] and skipped["relative_margin"] == 2
    one_grade = RankedCandidates("q", ("x", "y"), (("a", 0.9),), {"x": 0.5, "y": 1.0})
    for rule in ("max", "best_graded"):  # with one grade, best_graded is max
        kept, _ = filter_candidates(one_grade, FilterConfig(relative_margin=0.95, positive_score=rule))
        assert [c.id for c in kept] == ["a"]
