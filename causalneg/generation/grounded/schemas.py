"""Schemas of the grounded method's LLM calls: a compact, span-anchored decomposition and a short substitute.

Stage 1 (:func:`decomposition_schema`): 2-3 requirements, each
``{"requirement": <= 60 chars, "evidence": one of the passage's own options, "critical": bool, "strategy": ...}``.
``evidence`` is an enum built per request from the positive's query-side spans and its sentences (labelled
``sentence 1`` .. ``sentence k``), so the constrained decoder can only point at text that exists.
``strategy`` is one of the paper's break types that code can apply, and the schema ties it to the evidence:

- a span: ``entity_shift``, ``constraint_violation`` or ``attribute_shift``: replace it with a substitute;
- a sentence: ``relation_break``: drop the sentence.

``intent_drift`` and ``upstream_downstream`` need newly written text, which the small generators this method is
for cannot write (DESIGN §1a); they are left out rather than offered and then always rejected.

Stage 2 (:class:`Substitute`): one or two short alternatives of the same kind, ``<= 50`` characters each, starting
with a letter or digit, no quotes, braces or line breaks; each alternative makes its own negative. Field order
is the order of reasoning: the requirement is written before its evidence is picked.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from causalneg.artifacts import fingerprint

EditStrategy = Literal["entity_shift", "constraint_violation", "attribute_shift", "relation_break"]
REPLACE_STRATEGIES = frozenset({"entity_shift", "constraint_violation", "attribute_shift"})
SENTENCE_STRATEGIES = frozenset({"relation_break", "attribute_shift"})
MIN_REQUIREMENTS, MAX_REQUIREMENTS = 2, 3
REQUIREMENT_CHARS = 50
SUBSTITUTE_CHARS = 50
MAX_SUBSTITUTES = 2
JUDGE_CHOICES = ("yes", "no")


def sentence_label(index: int) -> str:
    """The evidence option naming sentence ``index`` (0-based) of the passage: ``sentence 1``, ..."""
    return f"sentence {index + 1}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SubstituteText = Annotated[
    str, Field(min_length=2, max_length=SUBSTITUTE_CHARS, pattern=r'^[A-Za-z0-9À-ÿ][^"{}\n\\]*$')
]


class Substitute(_Strict):
    """Stage 2: one or two alternatives for the evidence span (each makes its own negative)."""

    substitutes: list[SubstituteText] = Field(min_length=1, max_length=MAX_SUBSTITUTES)


class JudgeAnswer(_Strict):
    """The judge's reply when a backend cannot score choices (constrained to yes/no, greedy)."""

    answer: Literal["yes", "no"]


@lru_cache(maxsize=4096)
def decomposition_schema(spans: tuple[str, ...], sentences: tuple[str, ...]) -> type[BaseModel]:
    """The stage-1 model for one passage.

    ``{"main_requirement": R, "other_requirements": [R', ...]}``: the main requirement is critical by definition
    (so every valid decomposition has something to break) and is anchored to a span when the passage has one (the
    query's own entity or constraint: the edit that breaks it is the strongest one); each of the 1-3 others
    carries its ``critical`` flag.
    A requirement is one of two shapes (``anyOf``), so its strategy always fits its evidence:
    ``{"requirement", "evidence": <span>, "strategy": entity_shift | constraint_violation | attribute_shift}`` or
    ``{"requirement", "evidence": <sentence label>, "strategy": relation_break}``.
    """
    if not spans and not sentences:
        raise ValueError("a grounded decomposition needs at least one evidence option")
    text: Any = (Annotated[str, Field(min_length=1, max_length=REQUIREMENT_CHARS)], ...)
    variants: list[tuple[str, Any, Any]] = []
    if spans:
        variants.append(
            ("Span", Literal[spans], Literal["entity_shift", "constraint_violation", "attribute_shift"])
        )
    if sentences:
        variants.append(("Sentence", Literal[sentences], Literal["relation_break"]))
    main, other = [], []
    for name, evidence, strategy in variants:
        fields: dict[str, Any] = {
            "requirement": text,
            "evidence": (evidence, ...),
            "strategy": (strategy, ...),
        }
        if name == "Span" or not spans:  # the main requirement names what the query names, when it can
            main.append(create_model(f"Main{name}Requirement", __base__=_Strict, **fields))
        other.append(
            create_model(
                f"{name}Requirement",
                __base__=_Strict,
                requirement=text,
                evidence=(evidence, ...),
                critical=(bool, ...),
                strategy=(strategy, ...),
            )
        )
    main_type: Any = main[0] if len(main) == 1 else Union[tuple(main)]  # noqa: UP007
    other_type: Any = other[0] if len(other) == 1 else Union[tuple(other)]  # noqa: UP007
    others = (list[other_type], Field(min_length=MIN_REQUIREMENTS - 1, max_length=MAX_REQUIREMENTS - 1))
    model: type[BaseModel] = create_model(
        "GroundedDecomposition",
        __base__=_Strict,
        main_requirement=(main_type, ...),
        other_requirements=others,
    )
    return model


def requirements_of(decomposition: BaseModel) -> list[dict[str, Any]]:
    """``[{"requirement", "evidence", "critical", "strategy"}, ...]``, the main requirement first (critical)."""
    main = decomposition.main_requirement.model_dump()  # type: ignore[attr-defined]
    others = [r.model_dump() for r in decomposition.other_requirements]  # type: ignore[attr-defined]
    return [{**main, "critical": True}, *others]


def schema_family_hash() -> str:
    """Hash of the schemas' shape (bounds, fields, strategies), independent of one passage's options.

    Part of the artifact fingerprint: the per-request schemas differ only by their evidence enum, which is in
    every request's own key.
    """
    shape: dict[str, Any] = {
        "decompose": decomposition_schema(("<span>",), ("<sentence>",)).model_json_schema(),
        "substitute": Substitute.model_json_schema(),
        "judge": JudgeAnswer.model_json_schema(),
        "choices": JUDGE_CHOICES,
    }
    return fingerprint(json.loads(json.dumps(shape, sort_keys=True)))[:16]
