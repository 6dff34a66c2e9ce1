"""Pydantic schemas of the two structured LLM calls (DESIGN §1a) and of the naive baseline.

Every string and list is bounded: a weak model constrained to the schema then always closes its JSON, and the
size of the constraint automaton stays small. The automaton (outlines_core's index) unrolls every bounded string
of every list item, so its cost grows with ``sum(max_length)`` over the unrolled schema; the bounds below keep the
decomposition index at a size measured in ``prepare`` docs (see the transformers backend). Identifiers use tiny
patterns (``N1``..``N8``, ``S1``..``S3``) so the model cannot invent free-form ids that no check could resolve.

Semantic rules that a JSON schema cannot express are Pydantic validators, checked after decoding:
critical nodes carry 2-3 break strategies, node ids are unique, strategy ids are unique within a node, and at
least one node is critical. Whether a perturbed negative refers to an existing (node, strategy) pair *of a
critical node* (DESIGN §1a: a negative breaks a critical requirement) depends on the decomposition it was
written for, so it is a per-negative check (:func:`reference_error`) that the filters record as a rejection.

**Token budget.** :func:`max_output_chars` is the longest JSON text a schema admits (every bounded string at its
``max_length``, every list at its ``max_items``, plus the JSON syntax: braces, keys, quotes, commas, no
whitespace); :func:`max_output_tokens` divides it by :data:`CHARS_PER_TOKEN`. A call's ``max_new_tokens`` must
cover it, or a long but valid output is cut and rejected as ``invalid_json`` (tests/unit/test_generation_schemas.py
checks the shipped configs).
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from causalneg.artifacts import fingerprint

FacetType = Literal[
    "information_need", "entity", "attribute", "constraint", "relation", "reasoning", "style", "other"
]
StrategyType = Literal[
    "entity_shift",
    "intent_drift",
    "constraint_violation",
    "attribute_shift",
    "relation_break",
    "upstream_downstream",
    "other",
]
NegativeOrigin = Literal["rewritten_candidate", "generated_from_scratch"]

MIN_NODES, MAX_NODES = 4, 8
MAX_STRATEGIES = 3
CRITICAL_STRATEGIES = (2, 3)
# Character bounds (not tokens). Short analysis fields; passage-sized negatives. NEGATIVE_TEXT is a safety bound
# that lets a weak model close its JSON, not a length filter (the filters follow the corpus's own lengths,
# FilterConfig.length_from_corpus): it sits above the prompts' passage clip (generation.max_passage_chars,
# 1200), so a rewrite of any shown passage fits, and above the 95th percentile of HotpotQA/NQ/MS MARCO passages.
SHORT_TEXT = 120
NEGATIVE_TEXT = 1500
# Characters per token assumed for token budgets: English prose in BPE vocabularies (Llama, Qwen, SmolLM2) runs at
# about 4; JSON keys and punctuation at less. 3 is the budget's safety margin, not a hard bound (a model that
# emits one character per token can always be cut: the output is then rejected as invalid_json, with its reason).
CHARS_PER_TOKEN = 3

NodeId = Annotated[str, Field(pattern=r"^N[1-8]$", description="N1, N2, ... in order")]
StrategyId = Annotated[str, Field(pattern=r"^S[1-3]$", description="S1, S2, S3 within its node")]
ShortText = Annotated[str, Field(min_length=1, max_length=SHORT_TEXT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueryInfo(_Strict):
    core_need: ShortText
    how_positive_answers: ShortText
    answer_boundary: ShortText


class BreakStrategy(_Strict):
    id: StrategyId
    type: StrategyType
    direction: ShortText
    why_not_answer: ShortText


class ChainNode(_Strict):
    node_id: NodeId
    facet_type: FacetType
    content: ShortText
    critical: bool
    break_strategies: list[BreakStrategy] = Field(min_length=0, max_length=MAX_STRATEGIES)


class Decomposition(_Strict):
    """Stage 1: why the positive answers the query, as 4-8 falsifiable requirements."""

    query_info: QueryInfo
    chain_nodes: list[ChainNode] = Field(min_length=MIN_NODES, max_length=MAX_NODES)

    @model_validator(mode="after")
    def _semantics(self) -> Decomposition:
        ids = [node.node_id for node in self.chain_nodes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"node ids are not unique: {ids}")
        lo, hi = CRITICAL_STRATEGIES
        for node in self.chain_nodes:
            sids = [s.id for s in node.break_strategies]
            if len(set(sids)) != len(sids):
                raise ValueError(f"strategy ids of node {node.node_id} are not unique: {sids}")
            if node.critical and not lo <= len(sids) <= hi:
                raise ValueError(
                    f"critical node {node.node_id} has {len(sids)} break strategies, needs {lo}-{hi}"
                )
        if not any(node.critical for node in self.chain_nodes):
            raise ValueError("no node is critical: nothing to break")
        return self

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The decoding schema: node and strategy ids fixed by position, critical nodes with 2-3 strategies.

        ``chain_nodes`` becomes ``prefixItems`` of per-position node schemas (``node_id`` const ``N1``..``N8``),
        each an ``anyOf`` of a critical variant (``critical: true``, 2-3 strategies) and a supporting variant
        (``critical: false``, 0-3 strategies); strategies are ``prefixItems`` with ids ``S1``..``S3``. So every
        constrained output passes the semantic validators by construction, and a weak model spends no tokens
        on inventing ids. Engines that ignore ``minItems`` next to ``prefixItems`` (outlines_core) emit all 8
        nodes and 3 strategies, which is still valid. Validation uses the Pydantic model, not this schema.
        """
        schema = super().model_json_schema(*args, **kwargs)
        return _positional_schema(schema)

    def strategy(self, node_id: str, strategy_id: str) -> BreakStrategy | None:
        """The break strategy ``strategy_id`` of node ``node_id``, or None if there is none."""
        for node in self.chain_nodes:
            if node.node_id == node_id:
                return next((s for s in node.break_strategies if s.id == strategy_id), None)
        return None


def _positional_schema(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema["$defs"]
    node, strategy = defs.pop("ChainNode"), defs.pop("BreakStrategy")
    for k in range(1, MAX_STRATEGIES + 1):
        variant = copy.deepcopy(strategy)
        variant["properties"]["id"] = {"const": f"S{k}", "type": "string"}
        defs[f"StrategyS{k}"] = variant
    refs = [{"$ref": f"#/$defs/StrategyS{k}"} for k in range(1, MAX_STRATEGIES + 1)]
    for i in range(1, MAX_NODES + 1):
        variants = []
        for critical, min_items in ((True, CRITICAL_STRATEGIES[0]), (False, 0)):
            variant = copy.deepcopy(node)
            props = variant["properties"]
            props["node_id"] = {"const": f"N{i}", "type": "string"}
            props["critical"] = {"const": critical, "type": "boolean"}
            props["break_strategies"] = {
                "type": "array",
                "prefixItems": refs,
                "items": False,
                "minItems": min_items,
                "maxItems": CRITICAL_STRATEGIES[1] if critical else MAX_STRATEGIES,
            }
            variants.append(variant)
        defs[f"NodeN{i}"] = {"anyOf": variants}
    schema["properties"]["chain_nodes"] = {
        "type": "array",
        "prefixItems": [{"$ref": f"#/$defs/NodeN{i}"} for i in range(1, MAX_NODES + 1)],
        "items": False,
        "minItems": MIN_NODES,
        "maxItems": MAX_NODES,
    }
    return schema


class PerturbedNegative(_Strict):
    node_id: NodeId
    strategy_id: StrategyId
    strategy_type: StrategyType
    source: NegativeOrigin
    text: Annotated[str, Field(min_length=1, max_length=NEGATIVE_TEXT)]
    break_explanation: ShortText


class PerturbationOutput(_Strict):
    """Stage 2: at most N negatives, each breaking exactly one requirement. See :func:`perturbation_schema`."""

    negatives: list[PerturbedNegative] = Field(min_length=1)


class NaiveNegative(_Strict):
    text: Annotated[str, Field(min_length=1, max_length=NEGATIVE_TEXT)]


class NaiveOutput(_Strict):
    """The naive baseline: N negatives with no analysis. See :func:`naive_schema`."""

    negatives: list[NaiveNegative] = Field(min_length=1)


@cache
def perturbation_schema(max_negatives: int) -> type[PerturbationOutput]:
    """``PerturbationOutput`` with ``negatives`` bounded to 1..max_negatives (one class per N, cached)."""
    return _bounded(PerturbationOutput, PerturbedNegative, max_negatives)


@cache
def naive_schema(max_negatives: int) -> type[NaiveOutput]:
    """``NaiveOutput`` with ``negatives`` bounded to 1..max_negatives (one class per N, cached)."""
    return _bounded(NaiveOutput, NaiveNegative, max_negatives)


def _bounded(base: type, item: type[BaseModel], max_items: int) -> type:
    if max_items < 1:
        raise ValueError(f"max_negatives must be >= 1, got {max_items}")
    field = (list[item], Field(min_length=1, max_length=max_items))  # type: ignore[valid-type]
    model: type = create_model(f"{base.__name__}{max_items}", __base__=base, negatives=field)
    return model


def reference_error(negative: PerturbedNegative, decomposition: Decomposition) -> str | None:
    """Why a perturbed negative does not point at a break strategy of a *critical* node of its decomposition
    (None when it does): negatives break critical requirements only (DESIGN §1a)."""
    node = next((n for n in decomposition.chain_nodes if n.node_id == negative.node_id), None)
    if node is None:
        return f"no node {negative.node_id}"
    if not node.critical:
        return f"node {negative.node_id} is not critical"
    strategy = decomposition.strategy(negative.node_id, negative.strategy_id)
    if strategy is None:
        return f"no strategy {negative.strategy_id} on node {negative.node_id}"
    if strategy.type != negative.strategy_type:
        return f"strategy_type {negative.strategy_type} != {strategy.type} of {negative.node_id}/{negative.strategy_id}"
    return None


def json_schema(model: type[BaseModel]) -> dict[str, object]:
    """The JSON schema handed to the constrained decoder."""
    return model.model_json_schema()


def schema_hash(model: type[BaseModel]) -> str:
    """Stable hash of a schema (part of every request's cache key): changes when any bound or field changes."""
    return fingerprint(json.loads(json.dumps(json_schema(model), sort_keys=True)))[:16]


def max_output_chars(model: type[BaseModel]) -> int:
    """The longest JSON text (compact, no whitespace) that ``model``'s decoding schema admits, in characters.

    Strings count at ``maxLength`` plus 2 quotes (a JSON escape counts as the one character it encodes), ``const``
    and ``enum`` values at their longest JSON form, patterns at their longest match, booleans at 5 (``false``),
    objects with every property, arrays at ``maxItems`` items plus commas.
    """
    schema = json_schema(model)
    defs: dict[str, Any] = schema.get("$defs", {})  # type: ignore[assignment]

    def size(node: dict[str, Any]) -> int:
        if "$ref" in node:
            return size(defs[node["$ref"].rsplit("/", 1)[1]])
        if "anyOf" in node:
            return max(size(variant) for variant in node["anyOf"])
        if "const" in node:
            return len(json.dumps(node["const"]))
        if "enum" in node:
            return max(len(json.dumps(value)) for value in node["enum"])
        kind = node.get("type")
        if kind == "object":
            props = node.get("properties", {})
            fields = sum(len(json.dumps(key)) + 1 + size(value) for key, value in props.items())
            return 2 + fields + max(len(props) - 1, 0)
        if kind == "array":
            limit = node["maxItems"]
            items = list(node.get("prefixItems", []))[:limit]
            if len(items) < limit and node.get("items") not in (None, False):
                items += [node["items"]] * (limit - len(items))
            return 2 + sum(size(item) for item in items) + max(len(items) - 1, 0)
        if kind == "string":
            return 2 + (node["maxLength"] if "maxLength" in node else _pattern_length(node["pattern"]))
        if kind == "boolean":
            return len("false")
        raise ValueError(f"no worst-case size for schema node {node}")

    return size(schema)


def _pattern_length(pattern: str) -> int:
    """Length of every match of an anchored pattern of literals and character classes (e.g. ``^N[1-8]$``)."""
    body = re.sub(r"\[[^\]]*\]", "x", pattern.removeprefix("^").removesuffix("$"))
    if re.search(r"[*+?{}()|\\.]", body):
        raise ValueError(f"pattern {pattern!r} has no fixed length")
    return len(body)


def max_output_tokens(model: type[BaseModel], chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """Tokens that :func:`max_output_chars` takes at ``chars_per_token``: the ``max_new_tokens`` a call needs."""
    return math.ceil(max_output_chars(model) / chars_per_token)
