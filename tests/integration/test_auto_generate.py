"""``data.auto_generate``: training that finds its generated negatives missing hands the generation off to a
child process (:mod:`causalneg.stages.handoff`): its resolved config is written to ``<output_dir>/generate.yaml``
and ``python -m causalneg.stages.handoff`` runs the generate stage on that file. The generator is the fake
OpenAI-compatible server of the fault tests, serving the child from this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from causalneg.artifacts import is_complete, load_manifest
from causalneg.errors import ConfigError
from causalneg.stages.common import artifact_sources
from causalneg.stages.handoff import CONFIG_FILE, write_generation_config
from causalneg.stages.specs import generation_plan, load_dataset
from tests.conftest import tiny_overrides
from tests.faults.test_generation_faults import FakeServer, generate_overrides, serve  # noqa: F401

pytestmark = pytest.mark.integration


def training_overrides(tmp_path: Path, beir: Path, url: str, auto: bool) -> list[str]:
    """The naive arm on the tiny data set, its generator the fake server; 8 training queries."""
    generation = [o for o in generate_overrides(tmp_path, beir, url) if o.startswith("generation")]
    return [
        *tiny_overrides(tmp_path, beir),
        "+experiment=naive_llm",
        *[o for o in generation if o != "generation=naive"],
        "generation.limit=8",
        "data.max_train_queries=8",
        "logger.tracking_uri=null",
        f"data.auto_generate={str(auto).lower()}",
    ]


def test_auto_generate_hands_generation_to_a_child_process(
    tmp_path: Path,
    tiny_beir: Path,
    compose_cfg: Callable[..., Any],
    serve: Callable[..., FakeServer],  # noqa: F811  (the fixture)
) -> None:
    server = serve()
    server.healthy = True
    cfg = compose_cfg(training_overrides(tmp_path, tiny_beir, server.url, auto=True))
    dataset = load_dataset(cfg)
    plan = generation_plan(cfg, dataset)
    assert not is_complete(plan.directory)
    sources = artifact_sources(cfg, dataset, encoder=None)
    assert sources.ensure_generated is not None and sources.load_generated is not None

    directory = sources.ensure_generated()
    assert directory == plan.directory and is_complete(directory)
    assert (
        load_manifest(directory).fingerprint == plan.manifest.fingerprint
    )  # the child generated this config's
    written = OmegaConf.load(tmp_path / "run" / CONFIG_FILE)
    assert written.stage == "generate" and written.generation.limit == 8 and "hydra" not in written
    assert set(sources.load_generated(directory)) <= set(plan.selection.query_ids)
    requests = server.requests
    assert requests > 0
    assert sources.ensure_generated() == directory and server.requests == requests  # reused, no second child


def test_without_auto_generate_a_missing_artifact_is_an_error(
    tmp_path: Path, tiny_beir: Path, compose_cfg: Callable[..., Any]
) -> None:
    cfg = compose_cfg(training_overrides(tmp_path, tiny_beir, "http://127.0.0.1:9/v1", auto=False))
    sources = artifact_sources(cfg, load_dataset(cfg), encoder=None)
    assert sources.ensure_generated is not None
    with pytest.raises(ConfigError, match=r"data\.auto_generate=true"):
        sources.ensure_generated()
    assert not (tmp_path / "run" / CONFIG_FILE).exists()


def test_the_written_config_plans_the_same_artifact(
    tmp_path: Path, tiny_beir: Path, compose_cfg: Callable[..., Any]
) -> None:
    cfg = compose_cfg(training_overrides(tmp_path, tiny_beir, "http://127.0.0.1:9/v1", auto=True))
    dataset = load_dataset(cfg)
    written = OmegaConf.load(write_generation_config(cfg, tmp_path / "handoff"))
    assert generation_plan(written, dataset).directory == generation_plan(cfg, dataset).directory
