"""False-negative filters: each rule, its order, and its counts."""

from __future__ import annotations

import math

import pytest

from causalneg.data.mining.bm25 import top_k_indices
from causalneg.data.mining.filters import (
    Candidate,
    FilterConfig,
    RankedCandidates,
    filter_all,
    filter_candidates,
    margin_limits,
)


def ranked(
    scores: list[float], positives: dict[str, float], pos_in_list: tuple[int, ...] = ()
) -> RankedCandidates:
    """Candidates c1, c2, ... with ``scores`` (best first); positives inserted at the given list slots."""
    items = [(f"c{i + 1}", s) for i, s in enumerate(scores)]
    for slot, pid in zip(pos_in_list, positives, strict=False):
        items.insert(slot, (pid, positives[pid]))
    return RankedCandidates("q", tuple(positives), tuple(items), positives)


def ids(kept: list[Candidate]) -> list[str]:
    return [c.id for c in kept]


def test_positives_are_removed_and_ranks_count_only_non_positives() -> None:
    r = ranked([0.9, 0.8, 0.7], {"p": 1.0}, pos_in_list=(1,))  # c1, p, c2, c3
    kept, skipped = filter_candidates(r, FilterConfig())
    assert [(c.id, c.rank) for c in kept] == [("c1", 1), ("c2", 2), ("c3", 3)]
    assert skipped == {"positive": 1}


def test_rank_window_is_inclusive_and_one_based() -> None:
    r = ranked([0.9, 0.8, 0.7, 0.6, 0.5], {"p": 1.0}, pos_in_list=(0,))
    kept, skipped = filter_candidates(r, FilterConfig(rank_min=2, rank_max=4))
    assert ids(kept) == ["c2", "c3", "c4"] and [c.rank for c in kept] == [2, 3, 4]
    assert skipped == {"positive": 1, "below_rank_min": 1, "above_rank_max": 1}


def test_absolute_margin_drops_scores_above_positive_minus_margin() -> None:
    r = ranked([0.95, 0.9, 0.85, 0.5], {"p": 1.0})
    kept, skipped = filter_candidates(r, FilterConfig(absolute_margin=0.1))  # keep s <= 0.9
    assert ids(kept) == ["c2", "c3", "c4"] and skipped == {"absolute_margin": 1}


def test_relative_margin_is_nv_retriever_topk_percpos() -> None:
    r = ranked([12.0, 9.6, 9.5, 3.0], {"p": 10.0})
    kept, skipped = filter_candidates(r, FilterConfig(relative_margin=0.95))  # keep s <= 9.5
    assert ids(kept) == ["c3", "c4"] and skipped == {"relative_margin": 2}


def test_relative_margin_is_not_applied_when_the_positive_score_is_not_positive() -> None:
    r = ranked([2.0, 1.0], {"p": 0.0})  # e.g. BM25: the positive shares no word with the query
    kept, skipped = filter_candidates(r, FilterConfig(relative_margin=0.95))
    assert ids(kept) == ["c1", "c2"] and skipped == {"relative_margin_undefined": 1}
    assert margin_limits(-0.2, FilterConfig(relative_margin=0.9, absolute_margin=0.1)) == pytest.approx(
        (-0.3, math.inf)
    )


def test_positive_score_min_or_max_picks_the_reference_positive() -> None:
    r = ranked([0.85, 0.6, 0.4], {"p1": 0.9, "p2": 0.5})
    assert ids(filter_candidates(r, FilterConfig(relative_margin=1.0))[0]) == [
        "c1",
        "c2",
        "c3",
    ]  # max: <= 0.9
    assert ids(filter_candidates(r, FilterConfig(relative_margin=1.0, positive_score="min"))[0]) == ["c3"]


def test_margins_without_positive_scores_are_an_error() -> None:
    r = RankedCandidates("q", ("p",), (("c1", 1.0),), {})
    with pytest.raises(ValueError, match="positives' scores"):
        filter_candidates(r, FilterConfig(relative_margin=0.95))
    assert ids(filter_candidates(r, FilterConfig())[0]) == ["c1"]  # no margin: no score needed


def test_each_candidate_is_counted_under_the_first_rule_that_drops_it() -> None:
    # c1 is rank 1 (below rank_min) and above the margin: counted once, as below_rank_min.
    r = ranked([0.99, 0.98, 0.5, 0.4, 0.3, 0.2], {"p": 1.0}, pos_in_list=(0,))
    config = FilterConfig(rank_min=2, rank_max=5, relative_margin=0.95, max_per_query=2)
    kept, skipped = filter_candidates(r, config)
    assert ids(kept) == ["c3", "c4"]
    assert skipped == {
        "positive": 1,
        "below_rank_min": 1,
        "relative_margin": 1,
        "max_per_query": 1,
        "above_rank_max": 1,
    }
    assert sum(skipped.values()) + len(kept) == len(r.candidates)


def test_filter_all_totals() -> None:
    lists = [
        ranked([0.5, 0.4], {"p": 1.0}, pos_in_list=(0,)),
        RankedCandidates("q2", ("p",), (("p", 1.0),), {"p": 1}),
    ]
    kept, counts = filter_all(lists, FilterConfig(relative_margin=0.95))
    assert ids(kept["q"]) == ["c1", "c2"] and kept["q2"] == []
    assert counts["considered"] == 4 and counts["positive"] == 2 and counts["kept"] == 2
    assert (
        counts["queries"] == 2
        and counts["queries_without_candidates"] == 1
        and counts["relative_margin"] == 0
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank_min": 0},
        {"rank_min": 5, "rank_max": 4},
        {"relative_margin": 1.5},
        {"relative_margin": 0},
        {"absolute_margin": -0.1},
        {"max_per_query": 0},
        {"positive_score": "mean"},
    ],
)
def test_invalid_filter_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FilterConfig(**kwargs)  # type: ignore[arg-type]


def test_top_k_indices_sorted_with_deterministic_ties() -> None:
    import numpy as np

    scores = np.array([0.5, 2.0, 0.5, 3.0, 0.5, 0.0], dtype=np.float32)
    assert top_k_indices(scores, 4).tolist() == [3, 1, 0, 2]
    assert top_k_indices(scores, 10).tolist() == [3, 1, 0, 2, 4, 5]
    assert top_k_indices(scores, 0).tolist() == []


def test_bm25_index_is_reused_for_the_same_dataset_only() -> None:
    import gc

    from causalneg.data.mining import bm25
    from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit

    def dataset() -> RetrievalDataset:
        corpus = {f"d{i}": Passage(f"d{i}", f"word{i} common") for i in range(4)}
        split = RetrievalSplit({"q": Query("q", "word1")}, {"q": {"d1": 1}})
        return RetrievalDataset("x", corpus, {"train": split}, fingerprint="fp")

    first = dataset()
    index = bm25.BM25Index.from_dataset(first)
    assert bm25.BM25Index.from_dataset(first) is index
    assert bm25.BM25Index.from_dataset(first, bm25.BM25Options(stemmer=None)) is not index
    other = dataset()  # equal content, another object: not trusted to be the same
    assert bm25.BM25Index.from_dataset(other) is not bm25.BM25Index.from_dataset(first)
    del first, other
    gc.collect()
    assert bm25._LAST_INDEX == {}  # the cache dies with its dataset
