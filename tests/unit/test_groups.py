"""Training-group sampling: seeded per (seed, query, epoch); random or hardest mined, random or first positive."""

from __future__ import annotations

import pytest

from causalneg.data.groups import GroupSpec, QueryPool, sample_group
from causalneg.errors import ConfigError
from causalneg.records import Negative, NegativeSource, Passage, Query


def make_pool(n_mined: int = 10) -> QueryPool:
    mined = tuple(
        Negative(text=f"mined {i}", source=NegativeSource.MINED, passage_id=f"m{i}", score=float(-i))
        for i in range(n_mined)  # rank order: m0 is the hardest
    )
    generated = tuple(Negative(text=f"gen {i}", source=NegativeSource.GENERATED) for i in range(4))
    positives = (Passage(id="p0", text="first"), Passage(id="p1", text="second"))
    return QueryPool(query=Query(id="q", text="query"), positives=positives, mined=mined, generated=generated)


def ids(group_negatives: tuple[Negative, ...]) -> list[str | None]:
    return [n.passage_id or n.text for n in group_negatives]


def test_random_selection_is_seeded_and_changes_with_the_epoch() -> None:
    pool, spec = make_pool(), GroupSpec(num_mined=3, num_generated=2)
    a, b = sample_group(pool, spec, seed=0, epoch=0), sample_group(pool, spec, seed=0, epoch=0)
    assert a == b
    draws = {tuple(ids(sample_group(pool, spec, seed=0, epoch=e).negatives)) for e in range(8)}
    assert len(draws) > 1  # a new draw every epoch
    assert {sample_group(pool, spec, seed=0, epoch=e).positive.id for e in range(16)} == {"p0", "p1"}


def test_hardest_takes_the_top_ranked_mined_and_first_takes_the_first_positive() -> None:
    pool = make_pool()
    spec = GroupSpec(num_mined=3, num_generated=2, mined_selection="hardest", positive_selection="first")
    for epoch in range(5):
        group = sample_group(pool, spec, seed=1, epoch=epoch)
        assert ids(group.negatives)[:3] == ["m0", "m1", "m2"] and group.positive.id == "p0"
        random_spec = GroupSpec(num_mined=3, num_generated=2)
        # the generated draw does not depend on how the mined ones were selected
        assert group.negatives[3:] == sample_group(pool, random_spec, seed=1, epoch=epoch).negatives[3:]
    short = sample_group(make_pool(n_mined=2), spec, seed=0, epoch=0)
    assert ids(short.negatives)[:2] == ["m0", "m1"]  # fewer kept than Nm: all of them (the rest is masked)


@pytest.mark.parametrize("field", ["mined_selection", "positive_selection"])
def test_unknown_selection_is_a_config_error(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        GroupSpec(**{field: "nope"})  # type: ignore[arg-type]
