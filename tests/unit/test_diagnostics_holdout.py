"""Held-out diagnostic groups are chosen without looking at generated negatives, so arms train on the same
queries even when generation succeeded for only some of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from causalneg.data.datamodule import ArtifactSources, DataSettings, RetrievalDataModule
from causalneg.data.groups import GroupSpec, QueryPool, hold_out_diagnostic_pools
from causalneg.errors import ConfigError
from causalneg.records import Negative, NegativeSource, Passage, Query, RetrievalDataset, RetrievalSplit

QUERIES = 40  # 40 // 5 = 8 held-out groups


def tiny_dataset() -> RetrievalDataset:
    corpus = {f"d{i}": Passage(id=f"d{i}", text=f"passage {i}") for i in range(QUERIES)}
    queries = {f"q{i:02d}": Query(id=f"q{i:02d}", text=f"query {i}") for i in range(QUERIES)}
    qrels = {f"q{i:02d}": {f"d{i}": 1} for i in range(QUERIES)}
    return RetrievalDataset(name="tiny", corpus=corpus, splits={"train": RetrievalSplit(queries, qrels)})


def generated_for(query_ids: list[str]) -> dict[str, list[Negative]]:
    return {
        qid: [Negative(text=f"gen {qid} {k}", source=NegativeSource.GENERATED) for k in range(2)]
        for qid in query_ids
    }


def setup_module_with(generated: dict[str, list[Negative]]) -> RetrievalDataModule:
    sources = ArtifactSources(ensure_generated=lambda: Path("unused"), load_generated=lambda _: generated)
    settings = DataSettings(
        spec=GroupSpec(num_mined=0, num_generated=2),
        train_query_ids=tuple(f"q{i:02d}" for i in range(QUERIES)),
        selection_seed=3,
    )
    module = RetrievalDataModule(tiny_dataset(), lambda texts, side: {}, settings, sources)  # type: ignore[arg-type,return-value]
    module.setup("fit")
    return module


def ids(pools: list[QueryPool]) -> list[str]:
    return [p.query.id for p in pools]


def test_partial_generation_changes_neither_held_out_nor_training_queries() -> None:
    all_ids = [f"q{i:02d}" for i in range(QUERIES)]
    full = setup_module_with(generated_for(all_ids))
    partial = setup_module_with(generated_for(all_ids[::3]))  # generation succeeded for 14 of 40 queries
    none = setup_module_with({})  # a mined-only arm
    held = ids(full.diagnostic_pools)
    assert len(held) == 8
    for other in (partial, none):
        assert ids(other.diagnostic_pools) == held
        assert ids(other.train_pools) == ids(full.train_pools)
    assert set(held).isdisjoint(ids(full.train_pools))
    assert sorted(held + ids(full.train_pools)) == all_ids
    # The partial arm's held-out groups include queries without generated text: measured as mined-only.
    assert any(not p.generated for p in partial.diagnostic_pools)


def test_hold_out_is_seeded_and_bounded() -> None:
    pools = setup_module_with({}).train_pools
    train, held = hold_out_diagnostic_pools(pools, 5, seed=0)
    assert (train, held) == hold_out_diagnostic_pools(pools, 5, seed=0)
    assert ids(held) != ids(hold_out_diagnostic_pools(pools, 5, seed=1)[1])
    assert len(held) == 5 and len(train) == len(pools) - 5
    assert hold_out_diagnostic_pools(pools, 0, seed=0) == (pools, [])
    assert len(hold_out_diagnostic_pools(pools, 10_000, seed=0)[1]) == len(pools)


@pytest.mark.parametrize("seed", [0, 1])
def test_held_out_set_is_independent_of_which_pools_have_generated_text(seed: int) -> None:
    dataset = tiny_dataset()
    pools = [
        QueryPool(query=q, positives=(dataset.corpus[f"d{int(q.id[1:])}"],))
        for q in dataset.split("train").queries.values()
    ]
    with_text = [
        QueryPool(
            query=p.query, positives=p.positives, generated=tuple(generated_for([p.query.id])[p.query.id])
        )
        if i % 4 == 0
        else p
        for i, p in enumerate(pools)
    ]
    assert ids(hold_out_diagnostic_pools(pools, 8, seed)[1]) == ids(
        hold_out_diagnostic_pools(with_text, 8, seed)[1]
    )


def test_min_mined_leaves_out_short_queries_but_not_the_held_out_ones() -> None:
    """data.min_mined drops a training query with fewer kept mined candidates (sentence-transformers' rows);
    the held-out diagnostic groups stay those of the arm without the rule."""
    mined = {f"q{i:02d}": [(f"d{(i + k + 1) % QUERIES}", 1.0) for k in range(i % 4)] for i in range(QUERIES)}

    def module(min_mined: int) -> RetrievalDataModule:
        sources = ArtifactSources(mined=lambda split: Path("unused"), load_mined=lambda _: mined)
        settings = DataSettings(
            spec=GroupSpec(num_mined=3, min_mined=min_mined),
            train_query_ids=tuple(f"q{i:02d}" for i in range(QUERIES)),
            selection_seed=3,
        )
        m = RetrievalDataModule(tiny_dataset(), lambda texts, side: {}, settings, sources)  # type: ignore[arg-type,return-value]
        m.setup("fit")
        return m

    every, short = module(0), module(3)
    assert ids(short.diagnostic_pools) == ids(every.diagnostic_pools)
    assert ids(short.train_pools) == [p.query.id for p in every.train_pools if len(p.mined) >= 3]
    assert short.dropped_short == len(every.train_pools) - len(short.train_pools) > 0
    assert all(len(p.mined) == 3 for p in short.train_pools)
    with pytest.raises(ConfigError, match="leaves no training query"):
        module(4)
    with pytest.raises(ConfigError):
        GroupSpec(min_mined=-1)
