"""Schemas of the LLM calls: every string and list bounded, semantic validators, and the decoding schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from causalneg.generation.schemas import (
    NEGATIVE_TEXT,
    SHORT_TEXT,
    Decomposition,
    PerturbedNegative,
    naive_schema,
    perturbation_schema,
    reference_error,
    schema_hash,
)


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
    with pytest.raises(ValidationError, match="at most 600"):
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

    from causalneg.generation.generator_models import train_tiny_tokenizer

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
