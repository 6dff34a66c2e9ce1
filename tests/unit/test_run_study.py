"""experiments/run_study.py: the commands it would run (dry run), and the overrides the arms train with."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import run_study
import study_results as sr


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("$ ")]


def test_dry_run_prints_every_command_and_runs_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run_study, "STUDY", tmp_path)  # nothing committed: everything is to do

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a dry run ran {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    assert run_study.main(["--dry-run", "--datasets", "scifact", "--seeds", "0,1"]) == 0
    runs = commands(capsys.readouterr().out)
    generate = [c for c in runs if "stage=generate" in c]
    train = [c for c in runs if any(o.startswith("+experiment=") for o in c)]
    nq = [c for c in runs if "dataset=nq" in c]
    assert [c[c.index("stage=generate") + 2] for c in generate] == [
        "generation=grounded",
        "generation=naive",
        "generation=causalneg",
    ]
    assert all(
        "generation/backend=llamacpp" in c and "generation/model=qwen_coder_1_5b" in c for c in generate
    )
    assert "generation.limit=256" in generate[0] and "generation.limit=32" in generate[2]
    assert len(train) == 8 and len(nq) == 9  # 4 arms x 2 seeds, and the stock encoder once
    grounded = next(c for c in train if "+experiment=grounded" in c)
    assert f"data.generated_artifact={tmp_path / 'scifact' / 'grounded'}" in grounded
    assert "data.max_train_queries=256" in grounded and "+dataset.test_queries=null" in grounded
    assert not any(
        o.startswith("data.generated_artifact")
        for o in next(c for c in train if "+experiment=mined_only" in c)
    )
    assert not (tmp_path / "scifact").exists()


def test_committed_runs_and_negatives_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run_study, "STUDY", tmp_path)
    monkeypatch.setattr(run_study, "REPO", tmp_path.parent)
    for method in ("grounded", "naive", "causalneg_official"):
        sr.write_json(tmp_path / "scifact" / method / "manifest.json", {"counts": {}})
    sr.write_json(tmp_path / "nq_stock.json", {})
    for arm in run_study.ARMS:
        sr.write_json(sr.run_json_path(tmp_path, "scifact", arm, 0), {"scale": "q256"})
    sr.write_json(sr.run_json_path(tmp_path, "scifact", "grounded", 1), {"scale": "q64"})  # another scale
    assert run_study.main(["--dry-run", "--datasets", "scifact", "--seeds", "0,1", "--arms", "grounded"]) == 0
    runs = commands(capsys.readouterr().out)
    assert not [c for c in runs if "stage=generate" in c]
    assert [o for c in runs for o in c if o.startswith("seed=")] == ["seed=1", "seed=1"]  # train + NQ, seed 1


def test_with_overrides_replaces_keys() -> None:
    base = ["a=1", "+b.c=2", "d=3"]
    assert run_study.with_overrides(base, ["b.c=5", "e=6"]) == ["a=1", "d=3", "b.c=5", "e=6"]


def test_training_overrides_compose_to_the_grounded_method(compose_cfg) -> None:
    args = run_study.parse_args([])
    for arm, method in (("grounded", "grounded"), ("naive_llm", "naive"), ("mined_only", None)):
        overrides = [
            o for o in run_study.training_overrides(args, "hotpotqa", arm, "0") if not o.startswith("hydra.")
        ]
        cfg = compose_cfg(overrides)
        assert cfg.arm == arm and cfg.dataset.train_queries == 256 and cfg.dataset.test_queries is None
        if method is None:
            assert cfg.data.num_generated == 0 and cfg.data.generated_artifact is None
            continue
        assert cfg.generation.method == method and cfg.generation.backend.name == "llamacpp"
        assert cfg.generation.model.name == "qwen_coder_1_5b"
        assert cfg.data.generated_artifact.endswith(f"study/hotpotqa/{method}")
        assert ("query_view_entropy" in (cfg.get("regularizer") or {})) == (arm == "grounded")


def test_two_extended_copies_of_a_journal_merge_without_loss(tmp_path: Path) -> None:
    """The study and a check extend the same journal in two homes: merging keeps every request once."""
    import json

    import grounded_check

    def line(key: str) -> str:
        return json.dumps({"key": key, "text": key})

    committed, live = tmp_path / "committed.jsonl", tmp_path / "live" / "journal.jsonl"
    committed.write_text(f"{line('a')}\n{line('b')}\n", encoding="utf-8")
    grounded_check.sync_journal(live, committed)  # a fresh machine: seeded
    assert [json.loads(x)["key"] for x in live.read_text().splitlines()] == ["a", "b"]
    with live.open("a", encoding="utf-8") as handle:
        handle.write(f"{line('c')}\n")  # this home's new request
    with committed.open("a", encoding="utf-8") as handle:
        handle.write(f"{line('d')}\n")  # another home's, committed meanwhile
    assert grounded_check.merge_journal(committed, live) == 1
    assert grounded_check.merge_journal(live, committed) == 1
    for path in (committed, live):
        keys = [json.loads(x)["key"] for x in path.read_text().splitlines()]
        assert sorted(keys) == ["a", "b", "c", "d"]
