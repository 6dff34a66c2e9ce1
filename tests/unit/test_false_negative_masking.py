"""False-negative masking in InfoNCE: judged positives among a query's candidates leave its denominator.

The reference is a per-query loop over the candidate list that skips, by passage id, every candidate the query's
qrels judge relevant (and copies of its own positive), in float64: values and gradients must match.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from causalneg.data.batching import GroupCollator, passage_key
from causalneg.data.groups import GroupSpec, QueryPool, build_pools, sample_group
from causalneg.losses import InfoNCE, Objective
from causalneg.losses.masking import NO_KEY, PassageKeys, judged_positive_mask
from causalneg.records import (
    Negative,
    NegativeSource,
    Passage,
    Query,
    RetrievalDataset,
    RetrievalSplit,
    TrainingGroup,
)

B, K, D = 6, 4, 8


def make_case(seed: int) -> tuple[dict[str, Tensor], list[str], list[list[str | None]], list[set[str]]]:
    """Embeddings (leaves) plus passage ids: positive ids [B], negative ids [B][K] (None = generated) and the
    judged ids per query, with every kind of false negative present."""
    g = torch.Generator().manual_seed(seed)
    emb = {
        "q": F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1),
        "p": F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1),
        "n": F.normalize(torch.randn(B, K, D, generator=g, dtype=torch.float64), dim=-1),
    }
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[5, 2:] = False  # padding slots
    emb["mask"] = mask
    pos_ids = [f"p{i}" for i in range(B)]
    pos_ids[3] = "p1"  # queries 1 and 3 share their positive
    neg_ids: list[list[str | None]] = [[f"n{i}-{k}" for k in range(K)] for i in range(B)]
    neg_ids[2][1] = None  # generated text: no id, never masked
    neg_ids[4][0] = "p0"  # query 4's negative is query 0's positive
    neg_ids[5][3] = "p2"  # a padding slot holding a judged id: padding stays padding, not counted
    judged = [{pos_ids[i]} for i in range(B)]
    judged[0] |= {"p2", "n3-1", "unseen"}  # another query's positive, another query's negative, an absent id
    judged[1] |= {"n2-0"}
    judged[4] |= {"p0"}  # its own negative is judged (the data layer avoids it; the loss masks it anyway)
    return emb, pos_ids, neg_ids, judged


def keys_of(pos_ids: list[str], neg_ids: list[list[str | None]], judged: list[set[str]]) -> PassageKeys:
    width = max(map(len, judged))
    judged_key = torch.full((B, width), NO_KEY)
    for i, ids in enumerate(judged):
        judged_key[i, : len(ids)] = torch.tensor([passage_key(x) for x in sorted(ids)])
    neg_key = torch.tensor([[NO_KEY if x is None else passage_key(x) for x in row] for row in neg_ids])
    return PassageKeys(torch.tensor([passage_key(x) for x in pos_ids]), neg_key, judged_key)


def reference(
    emb: dict[str, Tensor],
    pos_ids: list[str],
    neg_ids: list[list[str | None]],
    judged: list[set[str]],
    tau: float,
    in_batch: bool,
    masking: bool,
    guide: tuple[Tensor, Tensor, Tensor] | None = None,
    margin: float = 0.0,
) -> tuple[Tensor, int, int]:
    """Mean over queries of -log softmax of the positive among the unmasked candidates; the judged-masked count
    and the guide-masked count (candidates the guide scores above its positive score minus ``margin``)."""
    q, p, n, mask = emb["q"], emb["p"], emb["n"], emb["mask"]
    losses, masked, guided = [], 0, 0
    for i in range(B):
        drop = judged[i] | {pos_ids[i]} if masking else set()
        owners = range(B) if in_batch else [i]
        pool: list[tuple[str | None, Tensor, Tensor | None]] = []  # (passage id, embedding, guide embedding)
        for j in owners:
            if j != i:
                pool.append((pos_ids[j], p[j], None if guide is None else guide[1][j]))
            pool += [
                (neg_ids[j][k], n[j, k], None if guide is None else guide[2][j, k])
                for k in range(K)
                if mask[j, k]
            ]
        cands = [p[i]]
        for pid, vec, guide_vec in pool:
            if pid is not None and pid in drop:
                masked += 1
            elif (
                guide is not None
                and guide_vec is not None
                and guide[0][i] @ guide_vec > (guide[0][i] @ guide[1][i] - margin)
            ):
                guided += 1
            else:
                cands.append(vec)
        logits = torch.stack([q[i] @ c for c in cands]) / tau
        losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean(), masked, guided


def leaves(emb: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone().requires_grad_(k != "mask") for k, v in emb.items()}


@pytest.mark.parametrize("masking", [True, False])
@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_masked_infonce_matches_the_reference_loop(seed: int, in_batch: bool, masking: bool) -> None:
    emb, pos_ids, neg_ids, judged = make_case(seed)
    ours, ref = leaves(emb), leaves(emb)
    keys = keys_of(pos_ids, neg_ids, judged)
    loss_fn = InfoNCE(temperature=0.07, in_batch_negatives=in_batch, mask_judged_positives=masking)
    loss, stats = loss_fn.loss_and_stats(ours["q"], ours["p"], ours["n"], ours["mask"], keys)
    expected, count, _ = reference(ref, pos_ids, neg_ids, judged, 0.07, in_batch, masking)
    assert torch.allclose(loss, expected, atol=1e-12, rtol=0)
    loss.backward()
    expected.backward()
    for name in ("q", "p", "n"):
        assert torch.allclose(ours[name].grad, ref[name].grad, atol=1e-12, rtol=0), name
    if masking:
        # in-batch: query 0 drops p2, n3-1 and n4-0 (= p0); 1 drops p3 (= p1) and n2-0; 3 drops p1; 4 drops p0
        # and its own n4-0. Own negatives only: query 4's n4-0. The padding slot n5-3 (= p2) never counts.
        assert int(stats["masked/judged_positive"]) == count == (8 if in_batch else 1)
    else:
        assert stats == {}


def guide_of(emb: dict[str, Tensor], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A guide's embeddings: the model's own, perturbed (so the guide agrees in part), detached."""
    g = torch.Generator().manual_seed(100 + seed)

    def noisy(t: Tensor) -> Tensor:
        return F.normalize(t.detach() + 0.7 * torch.randn(t.shape, generator=g, dtype=t.dtype), dim=-1)

    return noisy(emb["q"]), noisy(emb["p"]), noisy(emb["n"])


@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize("masking", [True, False])
@pytest.mark.parametrize("in_batch", [True, False])
def test_guide_masking_matches_the_reference_loop(in_batch: bool, masking: bool, margin: float) -> None:
    emb, pos_ids, neg_ids, judged = make_case(2)
    guide = guide_of(emb, 2)
    ours, ref = leaves(emb), leaves(emb)
    keys = keys_of(pos_ids, neg_ids, judged)
    loss_fn = InfoNCE(
        temperature=0.07, in_batch_negatives=in_batch, mask_judged_positives=masking, guide_margin=margin
    )
    loss, stats = loss_fn.loss_and_stats(ours["q"], ours["p"], ours["n"], ours["mask"], keys, guide)
    expected, count, guided = reference(ref, pos_ids, neg_ids, judged, 0.07, in_batch, masking, guide, margin)
    assert torch.allclose(loss, expected, atol=1e-12, rtol=0)
    loss.backward()
    expected.backward()
    for name in ("q", "p", "n"):
        assert torch.allclose(ours[name].grad, ref[name].grad, atol=1e-12, rtol=0), name
    assert int(stats["masked/guide"]) == guided and guided > 0
    assert int(stats.get("masked/judged_positive", -1)) == (count if masking else -1)
    assert guide[0].grad is None  # the guide gets no gradient


def test_guide_is_ignored_without_a_margin_and_a_huge_negative_margin_masks_nothing() -> None:
    emb, pos_ids, neg_ids, judged = make_case(0)
    keys, guide = keys_of(pos_ids, neg_ids, judged), guide_of(emb, 0)
    plain = InfoNCE(in_batch_negatives=True)
    off, stats = plain.loss_and_stats(emb["q"], emb["p"], emb["n"], emb["mask"], keys, guide)
    assert "masked/guide" not in stats
    assert torch.equal(off, plain(emb["q"], emb["p"], emb["n"], emb["mask"], keys))
    lenient = InfoNCE(in_batch_negatives=True, guide_margin=-10.0)  # nothing scores 10 above the positive
    same, stats = lenient.loss_and_stats(emb["q"], emb["p"], emb["n"], emb["mask"], keys, guide)
    assert torch.equal(same, off) and int(stats["masked/guide"]) == 0


def test_masking_changes_the_loss_only_through_judged_candidates() -> None:
    """Without keys, or with keys that judge nothing beyond the own positive and no duplicates, the loss is the
    plain InfoNCE; the duplicated positive alone already changes it."""
    emb, pos_ids, neg_ids, judged = make_case(0)
    loss_fn = InfoNCE(temperature=0.05, in_batch_negatives=True)
    plain = loss_fn(emb["q"], emb["p"], emb["n"], emb["mask"])
    unique_pos = [f"u{i}" for i in range(B)]
    none_judged = keys_of(unique_pos, [[None] * K for _ in range(B)], [{x} for x in unique_pos])
    assert torch.equal(loss_fn(emb["q"], emb["p"], emb["n"], emb["mask"], none_judged), plain)
    masked = loss_fn(emb["q"], emb["p"], emb["n"], emb["mask"], keys_of(pos_ids, neg_ids, judged))
    assert masked < plain  # masking only removes denominator terms


def test_objective_reports_the_masked_count() -> None:
    emb, pos_ids, neg_ids, judged = make_case(0)
    objective = Objective(InfoNCE(in_batch_negatives=True))
    source = torch.zeros(B, K, dtype=torch.long)
    out = objective(emb["q"], emb["p"], emb["n"], source, emb["mask"], keys_of(pos_ids, neg_ids, judged))
    assert int(out.stats["masked/judged_positive"]) == 8
    assert "masked/judged_positive" not in objective(emb["q"], emb["p"], emb["n"], source, emb["mask"]).stats


def test_judged_positive_mask_by_hand() -> None:
    candidates = torch.tensor([5, 7, NO_KEY, 9, 5])
    judged = torch.tensor([[7, NO_KEY], [NO_KEY, NO_KEY]])
    positive = torch.tensor([1, 9])
    expected = torch.tensor([[False, True, False, False, False], [False, False, False, True, False]])
    assert torch.equal(judged_positive_mask(candidates, judged, positive), expected)


def test_keys_shape_errors_name_the_tensors() -> None:
    emb, pos_ids, neg_ids, judged = make_case(0)
    keys = keys_of(pos_ids, neg_ids, judged)
    bad = PassageKeys(keys.positive[:2], keys.negatives, keys.judged)
    with pytest.raises(ValueError, match="passage keys must be"):
        InfoNCE()(emb["q"], emb["p"], emb["n"], emb["mask"], bad)


def test_collated_batches_carry_the_keys_of_every_judged_positive() -> None:
    """build_pools -> sample_group -> GroupCollator: judged ids from the qrels (all of them, also those not in
    the corpus), negative keys for corpus passages only, NO_KEY for generated text and empty slots."""
    corpus = {f"d{i}": Passage(f"d{i}", f"text {i}") for i in range(5)}
    split = RetrievalSplit(
        queries={"q0": Query("q0", "a"), "q1": Query("q1", "b")},
        qrels={"q0": {"d0": 1, "d1": 1, "d4": 0, "gone": 1}, "q1": {"d1": 1}},  # one grade: first = d0
    )
    dataset = RetrievalDataset("t", corpus, {"train": split})
    generated = {"q0": [Negative("made up", NegativeSource.GENERATED)]}
    pools = build_pools(dataset, "train", ["q0", "q1"], {"q0": [("d2", 1.0)], "q1": [("d0", 0.5)]}, generated)
    assert pools[0].judged_ids == ("d0", "d1", "gone")
    spec = GroupSpec(num_mined=1, num_generated=1, mined_selection="hardest", positive_selection="first")
    groups = [sample_group(pool, spec, seed=0, epoch=0) for pool in pools]

    def tokenize(texts: list[str], side: str) -> dict[str, Tensor]:
        return {
            "input_ids": torch.ones(len(texts), 2, dtype=torch.long),
            "attention_mask": torch.ones(len(texts), 2),
        }

    batch = GroupCollator(tokenize, spec.total)(groups)
    key = passage_key
    assert batch["positive_key"].tolist() == [key("d0"), key("d1")]
    assert batch["neg_key"].tolist() == [[key("d2"), NO_KEY], [key("d0"), NO_KEY]]
    assert batch["judged_key"].tolist() == [[key("d0"), key("d1"), key("gone")], [key("d1"), NO_KEY, NO_KEY]]
    # q1's mined negative d0 is q0's positive: judged by q0 only, so masked for q0 alone (own positive: label)
    keys = PassageKeys.from_batch(batch)
    assert keys is not None
    q = F.normalize(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    n = F.normalize(torch.randn(2, 2, 4, dtype=torch.float64), dim=-1)
    _, stats = InfoNCE(in_batch_negatives=True).loss_and_stats(q, q.clone(), n, batch["neg_mask"], keys)
    assert int(stats["masked/judged_positive"]) == 2  # for q0: q1's positive d1 and q1's negative d0
    pool_without_judged = QueryPool(query=Query("q", "x"), positives=(corpus["d3"],))
    assert sample_group(pool_without_judged, spec, 0, 0).judged_ids == ("d3",)
    assert passage_key("d0") == passage_key("d0") >= 0 and passage_key("d0") != passage_key("d1")


def test_training_group_default_judges_its_positive() -> None:
    group = TrainingGroup(Query("q", "x"), Passage("d", "y"), ())
    batch = GroupCollator(
        lambda texts, side: {
            "input_ids": torch.ones(len(texts), 1, dtype=torch.long),
            "attention_mask": torch.ones(len(texts), 1),
        },
        1,
    )([group])
    assert batch["judged_key"].tolist() == [[passage_key("d")]]
