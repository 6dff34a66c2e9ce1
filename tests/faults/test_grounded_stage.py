"""``stage=generate generation=grounded`` through the stage, with a scripted backend: the artifact's manifest and
MLflow both count every rejection per reason, and a second run reuses the artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from causalneg.stages import dispatch
from tests.faults import all_runs
from tests.integration.test_grounded_pipeline import ScriptedBackend

pytestmark = pytest.mark.integration

PASSAGES = {
    "p1": ("Unbreakable", "Unbreakable is a 2000 American superhero thriller film directed by M. Night Shyamalan. "
           "It stars Bruce Willis as David Dunn, a security guard who survives a train crash."),
    "p2": ("Arthur's Magazine", "Arthur's Magazine (1844–1846) was an American literary periodical published in "
           "Philadelphia in the 19th century. It was edited by Timothy Shay Arthur."),
    "p3": ("Minden, Nevada", "Minden is an unincorporated town in Douglas County, Nevada. The population was 3,001 "
           "at the 2010 census. It is the county seat of Douglas County."),
    "p4": ("Big Stone Gap", "Big Stone Gap is a 2014 American comedy film written and directed by Adriana Trigiani. "
           "It is set in the town of Big Stone Gap in Virginia."),
    "p5": ("First for Women", "First for Women is a woman's magazine published by Bauer Media Group in the USA. "
           "The magazine was started in 1989 and is based in Englewood Cliffs, New Jersey."),
}  # fmt: skip
QUERIES = {
    "q1": ("What is the name of Bruce Willis's character in Unbreakable?", "p1"),
    "q2": ("When did Arthur's Magazine start publishing in Philadelphia?", "p2"),
    "q3": ("What was the population of Minden, Nevada at the 2010 census?", "p3"),
    "q4": ("Who directed the comedy film Big Stone Gap?", "p4"),
}


def write_beir(root: Path) -> Path:
    root.mkdir(parents=True)
    corpus = [{"_id": pid, "title": title, "text": text} for pid, (title, text) in PASSAGES.items()]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    queries = [{"_id": qid, "text": text} for qid, (text, _) in QUERIES.items()]
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir()
    rows = ["query-id\tcorpus-id\tscore"] + [f"{qid}\t{pid}\t1" for qid, (_, pid) in QUERIES.items()]
    (root / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\n")
    return root


def test_grounded_stage_counts_rejections_in_the_manifest_and_mlflow(
    tmp_path: Path, compose_cfg, seed_mlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    import causalneg.generation.backends.factory as factory

    monkeypatch.setattr(factory, "build_backend", lambda _cfg: ScriptedBackend())
    root = seed_mlflow(tmp_path / "root")
    overrides = [
        "stage=generate",
        f"paths.root_dir={root}",
        f"paths.output_dir={root / 'run'}",
        "dataset=beir",
        f"dataset.path={write_beir(tmp_path / 'beir')}",
        "dataset.name=mini",
        "dataset.dev_split=null",
        "model=tiny",
        "generation=grounded",
        "generation/model=hf",
        "generation.model.path=scripted-llm",
        "generation.limit=4",
        "generation.progress=false",
    ]
    result: dict[str, Any] = dispatch(compose_cfg(overrides))
    manifest = json.loads((Path(result["artifact"]) / "manifest.json").read_text())
    rejections = manifest["counts"]["rejections"]
    assert manifest["counts"]["method"] == "grounded" and sum(rejections.values()) > 0
    assert manifest["inputs"]["schemas"].keys() == {"grounded"} and manifest["inputs"]["span_extractor"]
    rows = [json.loads(x) for x in (Path(result["artifact"]) / "rows.jsonl").read_text().splitlines()]
    assert [r["query_id"] for r in rows] == sorted(QUERIES)
    (run,) = all_runs(root)
    for reason, count in rejections.items():
        assert run.data.metrics[f"gen/rejections/{reason}"] == count
    assert dispatch(compose_cfg(overrides))["reused"]
