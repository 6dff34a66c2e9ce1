"""Schemas of the LLM calls: every string and list bounded, semantic validators, and the decoding schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from causalneg.generation.prompting import PromptInputs, render_messages
from causalneg.generation.schemas import (
    CHARS_PER_TOKEN,
    NEGATIVE_TEXT,
    SHORT_TEXT,
    Decomposition,
    PerturbedNegative,
    max_output_chars,
    max_output_tokens,
    naive_schema,
    perturbation_schema,
    reference_error,
    schema_hash,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "generation"


def strategy(k: int, type_: str = "entity_shift") -> dict[str, Any]:
    return {
        "id": f"S{k}",
        "type": type_,
        "direction": "swap the composer",
        "why_not_answer": "names someone else",
    }


def node(i: int, critical: bool, n_strategies: int) -> dict[str, Any]:
    return {
        "node_id": f"N{i}",
        "facet_type": "entity",
        "content": "names the composer",
        "critical": critical,
        "break_strategies": [strategy(k) for k in range(1, n_strategies + 1)],
    }


def decomposition(**changes: Any) -> dict[str, Any]:
    value = {
        "query_info": {
            "core_need": "who wrote it",
            "how_positive_answers": "names him",
            "answer_boundary": "a name",
        },
        "chain_nodes": [node(1, True, 2), node(2, False, 0), node(3, False, 1), node(4, True, 3)],
    }
    value.update(changes)
    return value


def test_valid_decomposition_round_trips() -> None:
    parsed = Decomposition.model_validate(decomposition())
    assert [n.node_id for n in parsed.chain_nodes] == ["N1", "N2", "N3", "N4"]
    assert parsed.strategy("N4", "S3") is not None and parsed.strategy("N2", "S1") is None
    assert Decomposition.model_validate_json(parsed.model_dump_json()) == parsed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chain_nodes": [node(i, True, 2) for i in range(1, 4)]}, "at least 4"),
        ({"chain_nodes": [node(i, True, 2) for i in range(1, 10)]}, "at most 8"),
        (
            {"chain_nodes": [node(1, True, 1), node(2, False, 0), node(3, False, 0), node(4, False, 0)]},
            "needs 2-3",
        ),
        (
            {"chain_nodes": [node(1, True, 2), node(1, False, 0), node(3, False, 0), node(4, False, 0)]},
            "not unique",
        ),
        ({"chain_nodes": [node(i, False, 1) for i in range(1, 5)]}, "no node is critical"),
        ({"chain_nodes": [node(1, True, 4), *[node(i, False, 0) for i in range(2, 5)]]}, "at most 3"),
        (
            {
                "query_info": {
                    "core_need": "x" * (SHORT_TEXT + 1),
                    "how_positive_answers": "a",
                    "answer_boundary": "b",
                }
            },
            "at most",
        ),
        (
            {"query_info": {"core_need": "", "how_positive_answers": "a", "answer_boundary": "b"}},
            "at least 1",
        ),
        ({"extra": 1}, "Extra inputs"),
    ],
)
def test_invalid_decompositions_fail(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Decomposition.model_validate(decomposition(**change))


def test_duplicate_strategy_ids_fail() -> None:
    bad = node(1, True, 2)
    bad["break_strategies"][1]["id"] = "S1"
    with pytest.raises(ValidationError, match="strategy ids of node N1"):
        Decomposition.model_validate(
            decomposition(chain_nodes=[bad, *[node(i, False, 0) for i in range(2, 5)]])
        )


def negative(**changes: Any) -> dict[str, Any]:
    value = {
        "node_id": "N1",
        "strategy_id": "S2",
        "strategy_type": "entity_shift",
        "source": "generated_from_scratch",
        "text": "Samuel Barber was an American composer of the opera Vanessa.",
        "break_explanation": "names another composer",
    }
    value.update(changes)
    return value


def test_perturbation_bounds() -> None:
    schema = perturbation_schema(3)
    assert len(schema.model_validate({"negatives": [negative()] * 3}).negatives) == 3
    with pytest.raises(ValidationError, match="at most 3"):
        schema.model_validate({"negatives": [negative()] * 4})
    with pytest.raises(ValidationError, match="at least 1"):
        schema.model_validate({"negatives": []})
    with pytest.raises(ValidationError, match=f"at most {NEGATIVE_TEXT}"):
        schema.model_validate({"negatives": [negative(text="x" * (NEGATIVE_TEXT + 1))]})
    with pytest.raises(ValidationError, match="pattern"):
        schema.model_validate({"negatives": [negative(node_id="node1")]})
    with pytest.raises(ValidationError, match="source"):
        schema.model_validate({"negatives": [negative(source="copied")]})
    assert perturbation_schema(3) is schema and perturbation_schema(1) is not schema


def test_naive_bounds() -> None:
    schema = naive_schema(2)
    assert schema.model_validate({"negatives": [{"text": "a"}, {"text": "b"}]})
    with pytest.raises(ValidationError):
        schema.model_validate({"negatives": [{"text": "a"}] * 3})
    with pytest.raises(ValueError, match="max_negatives"):
        naive_schema(0)


def test_reference_error() -> None:
    parsed = Decomposition.model_validate(decomposition())
    assert reference_error(PerturbedNegative.model_validate(negative()), parsed) is None
    assert "no strategy S3 on node N1" in str(
        reference_error(PerturbedNegative.model_validate(negative(strategy_id="S3")), parsed)
    )
    mismatch = PerturbedNegative.model_validate(negative(strategy_type="intent_drift"))
    assert "!= entity_shift" in str(reference_error(mismatch, parsed))


def test_a_negative_must_break_a_critical_node() -> None:
    """N3 is supporting (not critical) but has a strategy S1: a negative breaking it is not a hard negative."""
    parsed = Decomposition.model_validate(decomposition())
    assert parsed.strategy("N3", "S1") is not None
    supporting = PerturbedNegative.model_validate(negative(node_id="N3", strategy_id="S1"))
    assert reference_error(supporting, parsed) == "node N3 is not critical"
    missing = PerturbedNegative.model_validate(negative(node_id="N8", strategy_id="S1"))
    assert reference_error(missing, parsed) == "no node N8"


def test_passage_sized_negatives_fit_the_schema() -> None:
    """A typical corpus passage (HotpotQA/NQ up to ~1,200 characters: the prompts' clip) is not cut."""
    assert NEGATIVE_TEXT >= 1200
    schema = perturbation_schema(3)
    assert schema.model_validate({"negatives": [negative(text="word " * 240)]})
    assert naive_schema(3).model_validate({"negatives": [{"text": "word " * 240}]})


def _walk(schema: Any, path: str = "$") -> list[str]:
    """Paths of strings without maxLength and arrays without maxItems in a JSON schema."""
    problems: list[str] = []
    if isinstance(schema, dict):
        if (
            schema.get("type") == "string"
            and "maxLength" not in schema
            and "const" not in schema
            and "enum" not in schema
            and "pattern" not in schema
        ):
            problems.append(path)
        if schema.get("type") == "array" and "maxItems" not in schema:
            problems.append(path)
        for key, value in schema.items():
            problems += _walk(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            problems += _walk(value, f"{path}[{i}]")
    return problems


@pytest.mark.parametrize("model", [Decomposition, perturbation_schema(3), naive_schema(3)])
def test_every_string_and_list_is_bounded(model: type[BaseModel]) -> None:
    assert _walk(model.model_json_schema()) == []


def test_decoding_schema_fixes_ids_and_critical_strategies() -> None:
    schema = Decomposition.model_json_schema()
    nodes = schema["properties"]["chain_nodes"]
    assert (nodes["minItems"], nodes["maxItems"], nodes["items"]) == (4, 8, False)
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in nodes["prefixItems"]] == [
        f"NodeN{i}" for i in range(1, 9)
    ]
    critical, supporting = schema["$defs"]["NodeN3"]["anyOf"]
    assert critical["properties"]["node_id"]["const"] == "N3"
    assert critical["properties"]["critical"]["const"] is True
    assert critical["properties"]["break_strategies"]["minItems"] == 2
    assert supporting["properties"]["break_strategies"]["minItems"] == 0
    assert schema["$defs"]["StrategyS2"]["properties"]["id"]["const"] == "S2"
    json.dumps(schema)  # serialisable


def test_schema_hash_is_stable_and_specific() -> None:
    assert schema_hash(Decomposition) == schema_hash(Decomposition)
    assert (
        len(
            {
                schema_hash(Decomposition),
                schema_hash(perturbation_schema(3)),
                schema_hash(perturbation_schema(2)),
            }
        )
        == 3
    )


def test_grammar_enforces_the_decoding_schema(tmp_path: Any) -> None:
    """llguidance (the default grammar engine) accepts a valid instance and stops at each violated bound."""
    pytest.importorskip("llguidance")
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    from tests.tiny_generators import train_tiny_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(train_tiny_tokenizer(tmp_path / "tok"))
    lltok = llguidance.hf.from_tokenizer(tokenizer)
    spec = {**Decomposition.model_json_schema(), "x-guidance": {"whitespace_flexible": False}}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(spec))

    def accepted(value: dict[str, Any]) -> bool:
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        ids = tokenizer.encode(json.dumps(value, separators=(",", ":")), add_special_tokens=False)
        return all(matcher.consume_token(t) for t in ids) and matcher.is_accepting()

    assert accepted(decomposition())
    assert not accepted(
        decomposition(chain_nodes=[node(1, True, 1), *[node(i, False, 0) for i in range(2, 5)]])
    )
    assert not accepted(
        decomposition(chain_nodes=[node(2, True, 2), *[node(i, False, 0) for i in range(2, 5)]])
    )
    too_long = {"core_need": "x" * (SHORT_TEXT + 1), "how_positive_answers": "a", "answer_boundary": "b"}
    assert not accepted(decomposition(query_info=too_long))


# -- token budgets: max_new_tokens covers the longest output the schema admits --------------------------------


def test_max_output_chars_counts_bounds_and_json_syntax() -> None:
    # {"negatives":[{"text":"<NEGATIVE_TEXT characters>"}]}
    assert max_output_chars(naive_schema(1)) == len('{"negatives":[{"text":""}]}') + NEGATIVE_TEXT
    assert (
        max_output_chars(naive_schema(2))
        == 2 * max_output_chars(naive_schema(1)) - len('{"negatives":[]}') + 1
    )
    longest = decomposition(chain_nodes=[node(i, False, 3) for i in range(1, 9)])
    for n in longest["chain_nodes"]:
        n.update(facet_type="information_need", content="x" * SHORT_TEXT)
        for st in n["break_strategies"]:
            st.update(
                type="constraint_violation", direction="x" * SHORT_TEXT, why_not_answer="x" * SHORT_TEXT
            )
    longest["query_info"] = {k: "x" * SHORT_TEXT for k in longest["query_info"]}
    compact = json.dumps(longest, separators=(",", ":"))
    assert max_output_chars(Decomposition) == len(compact) == 9822
    assert max_output_tokens(Decomposition) == -(-9822 // CHARS_PER_TOKEN) == 3274


@pytest.mark.parametrize("preset", ["causalneg", "naive"])
def test_configured_max_new_tokens_cover_the_schemas(preset: str) -> None:
    gen = yaml.safe_load((CONF / f"{preset}.yaml").read_text(encoding="utf-8"))
    n = int(gen["num_negatives"])
    stages = {"decompose": Decomposition, "perturb": perturbation_schema(n), "naive": naive_schema(n)}
    checked = 0
    for stage, model in stages.items():
        if stage in gen:
            assert gen[stage]["max_new_tokens"] >= max_output_tokens(model), stage
            checked += 1
    assert checked == (2 if preset == "causalneg" else 1)


# -- the perturb prompt (official format) ---------------------------------------------------------------------


def perturb_prompt(candidates: tuple[str, ...] = ()) -> str:
    inputs = PromptInputs("q1", "who wrote it?", "p1", "Menotti wrote it.", candidates=candidates)
    parsed = Decomposition.model_validate(decomposition())
    return render_messages("perturb", inputs, 3, parsed)[-1]["content"]


def test_perturb_prompt_shows_the_query_info() -> None:
    text = perturb_prompt()
    for field in ("who wrote it", "names him", "a name"):  # core_need, how_positive_answers, answer_boundary
        assert field in text


def test_perturb_prompt_prefers_rewriting_a_candidate_and_offers_critical_strategies_only() -> None:
    text = perturb_prompt(("Barber wrote Vanessa.",))
    assert "Prefer rewriting one of the other passages" in text and "you may rewrite" not in text
    assert "Prefer rewriting" not in perturb_prompt()  # no candidates shown: nothing to rewrite
    assert "N1/S1" in text and "N4/S3" in text
    assert "N3/S1" not in text  # N3 is not critical: its strategy would be rejected (reference_error)
