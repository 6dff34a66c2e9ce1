"""Filters on known cases: each rejection reason, and texts that must be kept."""

from __future__ import annotations

import pytest
import torch

from causalneg.generation.backends.base import RawOutput
from causalneg.generation.filters import (
    FilterConfig,
    FilterContext,
    check_negative,
    containment,
    is_looping,
    jaccard,
    leaked_answer,
    parse_output,
    positive_similarity,
    shingles,
)
from causalneg.generation.schemas import naive_schema

POSITIVE = (
    "Gian Carlo Menotti (July 7, 1911 - February 1, 2007) was an Italian-American composer and librettist. "
    "He wrote the English language opera Maria Golovin for the 1958 Brussels World's Fair."
)
QUERY = "Which Italian-American composer and librettist wrote the English language opera, Maria Golovin?"
CANDIDATE = (
    "Samuel Barber was an American composer of orchestral, opera, choral, and piano music, born in 1910."
)
CTX = FilterContext(
    query=QUERY,
    positive=POSITIVE,
    candidates=(CANDIDATE,),
    answers=("Gian Carlo Menotti", "yes"),
    instructions="Each one stays on the topic of the collection and names its entities where it can, in its style.",
)
CFG = FilterConfig()
GOOD = (
    "Maria Golovin is an opera in three acts first staged in 1958 at the Brussels World's Fair, with a libretto "
    "set in a village near a frontier; the title role was sung by the soprano Franca Duval."
)


def reason(text: str, ctx: FilterContext = CTX, kept: tuple[str, ...] = ()) -> str | None:
    return check_negative(text, ctx, CFG, kept).reason


def test_a_good_negative_is_kept() -> None:
    assert reason(GOOD) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("   ", "empty"),
        ("Menotti wrote operas.", "too_short"),
        ("x " * 301, "too_long"),
        (
            "The passage does not mention the composer of Maria Golovin, only the year it was first staged.",
            "meta_talk",
        ),
        (
            "This passage is about an opera staged in Brussels in 1958 at the World's Fair, not about its composer.",
            "meta_talk",
        ),
        (
            "Here is a hard negative passage about the opera Maria Golovin and the Brussels World's Fair of 1958.",
            "meta_talk",
        ),
        ("the opera was staged in brussels " * 6, "looping"),
        (POSITIVE, "copies_positive"),
        (POSITIVE[:150], "copies_positive"),  # an excerpt: low Jaccard, containment ~1
        (CANDIDATE, "copies_candidate"),
        (QUERY + " Which composer wrote Maria Golovin?", "copies_query"),
        (
            "Each one stays on the topic of the collection and names its entities where it can, in its style, ok.",
            "copies_prompt",
        ),
        (
            "The opera Maria Golovin premiered in 1958; Gian-Carlo Menotti later revised the score for the stage.",
            "answer_leak",
        ),
    ],
)
def test_rejections(text: str, expected: str) -> None:
    assert reason(text) == expected


def test_duplicates_of_kept_negatives() -> None:
    assert reason(GOOD, kept=(GOOD,)) == "duplicate"
    assert reason(GOOD, kept=(GOOD.replace("soprano", "mezzo"),)) == "duplicate"  # near-duplicate
    assert reason(GOOD, kept=(CANDIDATE,)) is None


def test_answer_leak_rules() -> None:
    assert (
        leaked_answer("written by gian carlo menotti.", ["Gian Carlo Menotti"], QUERY) == "Gian Carlo Menotti"
    )
    assert leaked_answer("yes, it premiered in 1958", ["yes"], QUERY) is None  # yes/no answers skipped
    assert (
        leaked_answer("Maria Golovin premiered", ["Maria Golovin"], QUERY) is None
    )  # answer is in the query
    assert leaked_answer("The Menottis lived here", ["Menotti"], "who?") is None  # whole words only
    assert leaked_answer("The Beatles played", ["the Beatles"], "who?") == "the Beatles"  # articles ignored
    no_check = FilterConfig(check_answers=False)
    assert check_negative(
        "Gian Carlo Menotti wrote many operas for the stage in New York and in Italy.", CTX, no_check
    ).kept


def test_similarity_measures() -> None:
    a, b = shingles("abcdefgh", 5), shingles("abcdefgx", 5)
    assert jaccard(a, a) == 1.0 and 0 < jaccard(a, b) < 1
    assert containment(shingles("abcdef", 5), shingles("xxabcdefyy", 5)) == 1.0
    assert jaccard(set(), a) == 0.0
    assert is_looping("a" * 200, CFG) and not is_looping(GOOD, CFG)


def test_encoder_similarity_hook() -> None:
    vectors = {"pos": [1.0, 0.0], "near": [0.99, 0.1], "far": [0.0, 1.0]}

    def embed(texts: list[str]) -> torch.Tensor:
        return torch.tensor([vectors[t] for t in texts])

    sims = positive_similarity(["near", "far"], "pos", embed)
    assert sims[0] > 0.95 > sims[1]
    assert positive_similarity([], "pos", embed) == []


def test_parse_output_reasons() -> None:
    schema = naive_schema(2)
    ok, verdict = parse_output(RawOutput("k", '{"negatives":[{"text":"a"}]}', 9), schema)
    assert ok is not None and verdict.kept
    _, verdict = parse_output(RawOutput("k", '{"negatives":[{"te', 5, finish_reason="length"), schema)
    assert verdict.reason == "invalid_json" and "cut at 5 tokens" in verdict.detail
    _, verdict = parse_output(RawOutput("k", '{"negatives":[]}', 5), schema)
    assert verdict.reason == "schema_violation" and "negatives" in verdict.detail
    _, verdict = parse_output(RawOutput("k", "", 0, error="HTTP 500"), schema)
    assert verdict.reason == "backend_error" and verdict.detail == "HTTP 500"
