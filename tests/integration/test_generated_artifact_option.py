"""``data.generated_artifact``: train on a given generated-negatives folder (the study's committed negatives,
generated on the full corpus, trained on a sub-sample), and the count of kept generated negatives per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from causalneg.artifacts import Manifest, write_artifact
from causalneg.data.datamodule import generated_counts
from causalneg.data.groups import QueryPool
from causalneg.errors import ConfigError
from causalneg.records import Negative, NegativeSource, Passage, Query
from causalneg.stages.common import artifact_sources, load_dataset
from tests.conftest import tiny_overrides


@pytest.mark.integration
def test_an_explicit_artifact_is_used_as_it_is(tmp_path: Path, tiny_beir: Path, compose_cfg) -> None:
    given = tmp_path / "committed" / "grounded"
    overrides = [
        *tiny_overrides(tmp_path, tiny_beir),
        "+experiment=grounded",
        f"data.generated_artifact={given}",
    ]
    cfg = compose_cfg(overrides)
    sources = artifact_sources(cfg, load_dataset(cfg), encoder=None)
    assert sources.ensure_generated is not None
    with pytest.raises(ConfigError, match="not a complete generated artifact"):
        sources.ensure_generated()  # missing: an error, never a generation run
    write_artifact(given, [], Manifest.build("generated", {"test": True}, {}))
    assert sources.ensure_generated() == given


def test_generated_counts_count_the_arms_source_only() -> None:
    def pool(qid: str, sources: list[NegativeSource]) -> QueryPool:
        negatives = tuple(Negative(text=f"{qid} {i}", source=s) for i, s in enumerate(sources))
        return QueryPool(Query(qid, qid), (Passage("p", "text"),), generated=negatives)

    g, naive = NegativeSource.GENERATED, NegativeSource.NAIVE_GENERATED
    pools = [pool("a", [g, g, naive]), pool("b", []), pool("c", [naive])]
    assert generated_counts(pools, g) == {"kept": 2, "queries_with_generated": 1, "queries": 3}
    assert generated_counts(pools, naive) == {"kept": 2, "queries_with_generated": 2, "queries": 3}
