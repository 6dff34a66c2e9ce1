"""Pins: the selected training queries and the mined / generated artifact fingerprints of representative configs.

Artifacts are reused by fingerprint and every arm of a study trains on one selection, so a refactor that moves
either silently regenerates negatives (hours of LLM time) or compares arms on different queries. The values were
computed with the code of c6968b2 (before issue 14) and must not change. ``STUDY`` are the generations of
``experiments/run_study.py`` (``generation.limit == data.max_train_queries``: 256 HotpotQA, 64 SciFact queries),
whose artifacts the training arms read; they need the shared data sets and no model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from causalneg.artifacts import fingerprint
from causalneg.stages.specs import data_settings, generation_plan, load_dataset, mined_input
from tests.conftest import tiny_overrides


def observed(cfg: Any) -> list[str]:
    """Fingerprints (16 hex digits) of the selections and the manifests of ``cfg``, through the stages' specs."""
    dataset = load_dataset(cfg)
    settings = data_settings(cfg, dataset)
    mined = mined_input(cfg, dataset, str(cfg.dataset.train_split))
    dev = mined_input(cfg, dataset, str(cfg.dataset.dev_split)) if cfg.dataset.get("dev_split") else None
    generated = generation_plan(cfg, dataset)
    values = [
        fingerprint(list(settings.train_query_ids)),
        mined.selection.fingerprint,
        generated.selection.fingerprint,
        mined.manifest.fingerprint,
        dev.manifest.fingerprint if dev else "-",
        generated.manifest.fingerprint,
    ]
    assert generated.directory.name.endswith(values[-1][:12])
    return [v[:16] for v in values]


# name -> (overrides, pinned [training ids, mined ids, generated ids, mined, mined dev, generated] fingerprints)
DEV = "ce2e8326856310bd"  # the BM25-mined dev split: the same in every BM25 case (max_dev_queries, seed 0)
TINY: dict[str, tuple[list[str], list[str]]] = {
    "default": ([], ["9d338e96a32fed2e"] * 3 + ["cf64bb66769fc41d", DEV, "311eb0ac248fa75a"]),
    "sampled": (
        ["data.max_train_queries=10", "data.selection_seed=3"],
        ["1d0f6dddcd0294fe"] * 3 + ["c1fcb305d7d98f5a", DEV, "ca5d4f26f568a8da"],
    ),
    "dense": (
        ["mining=dense", "data.max_train_queries=12"],
        ["1c53b41bf3b6e1f6"] * 3 + ["e277b92c6b1471f0", "7ce908d1070e7836", "bdc137115a429c99"],
    ),
    "naive_limit": (  # generation.limit below data.max_train_queries: a seeded sample of its own
        ["generation=naive", "generation.limit=5", "data.max_train_queries=20"],
        ["d621cb5e6f1681f9"] * 2 + ["4d6cc622c01e7c24", "35db3d9b2b0606ff", DEV, "3c77ec4b2399e553"],
    ),
    "grounded_candidates": (
        ["generation=grounded", "data.max_train_queries=7", "generation.num_candidates=2"],
        ["a0b0b8c512e10e99"] * 3 + ["1420ecd3a1d6f342", DEV, "2548ceea98bfd435"],
    ),
}
STUDY_GENERATION = [
    "generation=grounded",
    "generation/backend=llamacpp",
    "generation/model=qwen_coder_1_5b",
    "generation.max_retries=2",
    "logger.tracking_uri=null",
    "generation.progress=false",
    "generation.backend.n_threads=2",
]
# dataset -> (queries, selection, generated artifact). The grounded fingerprints cover the grounded code's own
# version (its verification rules), so a rule change moves them (and the grounded_candidates pin above) by design:
# update them in the same commit, from the folder that `stage=generate` publishes, after checking that the
# selection pins did not move.
STUDY = {
    "hotpotqa": (256, "0e7de0c68fdee00f", "a18d2ab9dd54d662"),
    "scifact": (64, "ba8add745f0b3422", "d894fb42f9d1b01d"),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_configs(name: str, tmp_path: Path, tiny_beir: Path, compose_cfg: Callable[..., Any]) -> None:
    overrides = [o for o in tiny_overrides(tmp_path, tiny_beir) if not o.startswith("paths.output_dir")]
    extra, pinned = TINY[name]
    assert observed(compose_cfg([*overrides, *extra, "hydra.runtime.output_dir=/tmp"])) == pinned


@pytest.mark.parametrize("dataset", sorted(STUDY))
def test_study_generation(
    dataset: str,
    tmp_path: Path,
    shared_data_dir: Path,
    compose_cfg: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The study's artifacts (``<dataset>/generated/grounded-<fingerprint[:12]>``) and their queries."""
    queries, selection, artifact = STUDY[dataset]
    monkeypatch.setenv("CAUSALNEG_HOME", str(tmp_path))
    overrides = [
        f"dataset={dataset}",
        *STUDY_GENERATION,
        f"generation.limit={queries}",
        f"data.max_train_queries={queries}",
        f"paths.shared_data_dir={shared_data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    train, mined_ids, generated_ids, _, _, generated = observed(compose_cfg(overrides))
    assert train == mined_ids == generated_ids == selection
    assert generated == artifact
