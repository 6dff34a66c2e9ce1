"""Filters on known cases: each rejection reason, and texts that must be kept."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from causalneg.generation.backends.base import GenerationRequest, RawOutput
from causalneg.generation.filters import (
    FilterConfig,
    FilterContext,
    answer_aliases,
    check_negative,
    containment,
    copied_candidate,
    corpus_length_band,
    is_looping,
    jaccard,
    leaked_answer,
    normalize_answer,
    parse_output,
    positive_similarity,
    shingles,
)
from causalneg.generation.schemas import NEGATIVE_TEXT, naive_schema

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
        ("x " * (NEGATIVE_TEXT // 2 + 1), "too_long"),  # reached the schema bound: cut by it
        (
            "The passage does not mention the composer of Maria Golovin, only the year it was first staged.",
            "meta_talk",
        ),
        (
            "This passage is about an opera staged in Brussels in 1958 at the World's Fair, not about its composer.",
            "meta_talk",
        ),
        (
            "In 1958 the opera was staged in Brussels; however, the passage does not mention who composed it.",
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


# -- copies of a candidate: near-verbatim only (a rewrite of a candidate is the intended output) ---------------

LONG_CANDIDATE = (
    "Vanessa is an American opera in three acts composed by Samuel Barber in 1956 and 1957. It premiered at the "
    "Metropolitan Opera in New York City on 15 January 1958, conducted by Dimitri Mitropoulos, with Eleanor "
    "Steber in the title role; it won the Pulitzer Prize for Music that year."
)
LONG_CTX = FilterContext(query=QUERY, positive=POSITIVE, candidates=(LONG_CANDIDATE,), answers=CTX.answers)


def test_a_one_entity_swap_in_a_candidate_is_kept() -> None:
    swapped = LONG_CANDIDATE.replace("Samuel Barber", "Aaron Copland")
    assert containment(shingles(swapped, 5), shingles(LONG_CANDIDATE, 5)) >= 0.9  # the old rule rejected it
    assert reason(swapped, LONG_CTX) is None
    moved = LONG_CANDIDATE.replace("Metropolitan Opera in New York City", "Lyric Opera of Chicago")
    assert reason(moved, LONG_CTX) is None


@pytest.mark.parametrize(
    "copy",
    [
        LONG_CANDIDATE,  # unchanged
        "  " + LONG_CANDIDATE.upper() + "  ",  # case and spacing only
        LONG_CANDIDATE.split(". ")[1],  # a pure excerpt
        LONG_CANDIDATE.replace(" an ", " the ").replace("; it", ", and it"),  # function words only
    ],
)
def test_near_verbatim_copies_of_a_candidate_are_rejected(copy: str) -> None:
    assert reason(copy, LONG_CTX) == "copies_candidate"
    assert copied_candidate(copy, LONG_CANDIDATE)


def test_copies_of_the_positive_stay_strict() -> None:
    swapped = POSITIVE.replace("1958", "1962")  # a minimal edit of the positive still answers the query
    assert reason(swapped, FilterContext(QUERY, POSITIVE)) == "copies_positive"


# -- length: the corpus's own band ----------------------------------------------------------------------------


def test_corpus_length_band_is_the_quantiles_of_the_lengths() -> None:
    assert corpus_length_band(list(range(1, 101)), (0.05, 0.95)) == (5, 96)  # 5.95 floored, 95.05 ceiled
    assert corpus_length_band([300], (0.05, 0.95)) == (300, 300)
    with pytest.raises(ValueError, match="no passage lengths"):
        corpus_length_band([], (0.05, 0.95))


def test_length_follows_the_corpus_band() -> None:
    n = len(GOOD)

    def band(lo: int, hi: int) -> str | None:
        cfg = FilterConfig(length_from_corpus=True, corpus_chars=(lo, hi))
        return check_negative(GOOD, CTX, cfg).reason

    assert band(n - 50, n) is None
    assert band(n + 1, n + 300) == "too_short"
    assert band(20, n - 1) == "too_long"
    assert FilterConfig(length_from_corpus=True, corpus_chars=(70, 900)).length_band == (70, 900)
    assert FilterConfig(corpus_chars=(70, 900)).length_band == (60, NEGATIVE_TEXT)  # option off: fixed band
    with pytest.raises(ValueError, match="needs corpus_chars"):
        FilterConfig(length_from_corpus=True)
    with pytest.raises(ValueError, match="length_quantiles"):
        FilterConfig(length_quantiles=(0.9, 0.1))


# -- meta talk: the model's self-reference, not narrative prose -----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I made a mistake. I'm sorry: the opera Maria Golovin was first staged at the Brussels fair in 1958.",
        "I\u2019m sorry, the opera Maria Golovin was first staged at the Brussels World's Fair in 1958 in Belgium.",
        "I apologize for the confusion: the opera Maria Golovin premiered at the Brussels World's Fair in 1958.",
        "As requested, the opera Maria Golovin premiered at the Brussels World's Fair in 1958 with a new cast.",
    ],
)
def test_apologies_and_self_reference_are_meta_talk(text: str) -> None:
    assert reason(text) == "meta_talk"


@pytest.mark.parametrize(
    "text",
    [
        "The 1998 album did not include the single, which was released later on a compilation of early recordings.",
        "The document was signed in 1648 in Munster by envoys of the Dutch Republic and Spain, ending a long war.",
        "The funds for the new opera house were released as requested by the mayor of Brussels in the spring of 1958.",
    ],
)
def test_narrative_prose_is_not_meta_talk(text: str) -> None:
    assert reason(text) is None


# -- answer leaks: aliases and namesakes ----------------------------------------------------------------------

CAPITAL = "What is the capital of France?"


@pytest.mark.parametrize(
    ("text", "answer", "query", "leaks"),
    [
        (
            "Paris, Texas is a city in Lamar County with a replica of the Eiffel Tower.",
            "Paris",
            CAPITAL,
            False,
        ),
        ("Paris Hilton was born in New York City in 1981.", "Paris", CAPITAL, False),
        ("Paris Saint-Germain won the league title again.", "Paris", CAPITAL, False),
        ("The Paris Review printed the story in its spring issue.", "Paris", CAPITAL, False),
        ("He retired to Lake Geneva in 1990.", "Geneva", "Where did he retire?", False),
        ("The delegates met in Paris in 1919.", "Paris", CAPITAL, True),
        ("In Paris the exhibition opened in May.", "Paris", CAPITAL, True),  # sentence-initial "In"
        ("Paris, France hosted the exhibition.", "Paris", CAPITAL, True),  # the query names the qualifier
        (
            "Cities such as Paris, London and Rome grew fast.",
            "Paris",
            CAPITAL,
            True,
        ),  # a list, not a qualifier
        ("the 1998 World Cup was held in France", "1998", "When was it?", True),  # numbers are never names
        ("The bank opened its first branch in Zurich in 1856.", "Zürich", "Where?", True),
        ("The bank opened its first branch in Zürich in 1856.", "Zurich", "Where?", True),
        ("The ZURICH branch opened in 1856.", "zurich", "Where?", True),
        ("The band had three members when it started.", "3", "How many members?", True),
        ("The band had 3 members when it started.", "three", "How many members?", True),
        ("The siege lasted twenty-one days.", "21", "How long?", True),
        ("The siege lasted twenty one days.", "21", "How long?", True),
        ("The ticket cost 1,000 francs.", "1000", "How much?", True),
        ("The ticket cost one thousand francs.", "1,000", "How much?", True),
        ("The ticket cost 1000 francs.", "one thousand", "How much?", True),
        ("The siege lasted twenty-two days.", "21", "How long?", False),
        ("The band had thirty members.", "3", "How many members?", False),  # whole numbers only
    ],
)
def test_answer_leak_aliases_and_namesakes(text: str, answer: str, query: str, leaks: bool) -> None:
    assert (leaked_answer(text, [answer], query) == answer) is leaks


def test_answer_aliases() -> None:
    assert answer_aliases("Zürich") == {"zurich"}
    assert answer_aliases("21") == answer_aliases("twenty-one") == {"21", "twenty one"}
    assert answer_aliases("1,000") == {"1000", "one thousand"}
    assert answer_aliases("The Beatles") == {"beatles"}
    assert answer_aliases("3 Doors Down") == {"3 doors down", "three doors down"}
    assert answer_aliases("") == set()
    assert normalize_answer("Two thousand three hundred and forty-five people") == "2345 people"
    assert leaked_answer("Three Doors Down played first.", ["3 Doors Down"], "who?") == "3 Doors Down"


class EchoBackend:
    """A naive-schema backend answering every request with the same two texts."""

    name, model_id = "echo", "echo-llm"
    TEXTS = (
        "Harbour cranes moved grain sacks along the quay while ferries waited near the breakwater.",  # 89 chars
        "Harbour cranes moved grain sacks along the quay while ferries waited near the breakwater, and gulls "
        "circled above the fish market until the evening bell.",  # 153 chars
    )

    def generate(self, requests: Sequence[GenerationRequest], *args: Any) -> list[RawOutput]:
        text = json.dumps({"negatives": [{"text": t} for t in self.TEXTS]})
        return [RawOutput(r.key, text, 10, finish_reason="stop") for r in requests]

    def close(self) -> None:
        return None


def test_generate_stage_applies_and_records_the_corpus_length_band(
    tmp_path: Path, tiny_beir: Path, compose_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from causalneg.artifacts import load_manifest
    from causalneg.generation.backends import factory
    from causalneg.stages import generate
    from causalneg.stages.common import load_dataset

    monkeypatch.setattr(factory, "build_backend", lambda cfg: EchoBackend())
    cfg = compose_cfg(
        [
            "stage=generate",
            f"paths.root_dir={tmp_path}",
            f"paths.output_dir={tmp_path / 'run'}",
            "dataset=beir",
            f"dataset.path={tiny_beir}",
            "dataset.name=tiny",
            "generation=naive",
            "generation/model=hf",
            "generation.model.path=echo-llm",
            "generation.limit=3",
            "generation.max_retries=0",
            "generation.progress=false",
            "generation.filters.max_positive_similarity=null",
            "logger.tracking_uri=null",
        ]
    )
    lengths = [len(p.full_text) for p in load_dataset(cfg).corpus.values()]
    band = corpus_length_band(lengths, (0.05, 0.95))
    assert band[0] < len(EchoBackend.TEXTS[0]) <= band[1] < len(EchoBackend.TEXTS[1])  # tiny corpus: 77-99
    assert generate.filter_config(cfg, load_dataset(cfg)).length_band == band
    summary = generate.run(cfg)
    assert summary["negatives_kept"] == 3 and summary["rejections"] == {"too_long": 3}
    assert tuple(load_manifest(summary["artifact"]).config["filters"]["corpus_chars"]) == band
    from causalneg.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the dataset"):
        generate.filter_config(cfg)
