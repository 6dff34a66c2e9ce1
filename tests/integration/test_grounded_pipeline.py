"""The grounded pipeline end to end with a scripted backend: kept rows and their provenance, rejection counts,
the judge's calibration, and resume from the journal (no request sent twice, same rows)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from causalneg.generation.backends.base import GenerationRequest, RawOutput, SamplingConfig
from causalneg.generation.grounded.pipeline import GroundedItem, GroundedSettings, run_grounded
from causalneg.generation.grounded.verify import VerifyConfig
from causalneg.generation.store import RequestStore

pytestmark = pytest.mark.integration

PASSAGE = (
    "Unbreakable (film). Unbreakable is a 2000 American superhero thriller film written and directed by "
    "M. Night Shyamalan. It stars Bruce Willis as David Dunn, a security guard who survives a train crash. "
    "The film was released on November 22, 2000 by Touchstone Pictures."
)
ITEM = GroundedItem(
    query_id="q1",
    query="What is the name of Bruce Willis's character in Unbreakable?",
    positives=(("p1", PASSAGE),),
    answers=("David Dunn",),
)


def _req(requirement: str, evidence: str, strategy: str, critical: bool | None = None) -> dict[str, object]:
    out: dict[str, object] = {"requirement": requirement, "evidence": evidence, "strategy": strategy}
    return out if critical is None else {**out, "critical": critical}


SUBSTITUTES = {"Unbreakable": "Glass", "Touchstone Pictures": "Miramax Films"}


class ScriptedBackend:
    """Decomposes into (Bruce Willis: entity_shift, sentence 3: relation_break, Unbreakable: attribute_shift),
    substitutes "Samuel L. Jackson" / "Glass", and judges: the positive 0.8, any passage without "Bruce Willis"
    0.3, else 0.85."""

    name, model_id = "scripted", "scripted-llm"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        outputs = []
        for request in requests:
            self.sent.append(request.key)
            user = request.messages[-1]["content"]
            if "requirements" in user:
                text = json.dumps(
                    {"main_requirement": _req("the actor", "Bruce Willis", "entity_shift")}
                    | {
                        "other_requirements": [
                            _req("the role", "sentence 3", "relation_break", True),
                            _req("the film", "Unbreakable", "attribute_shift", False),
                        ]
                    }
                )
            else:
                named = next((v for k, v in SUBSTITUTES.items() if f'"{k}"' in user), "Samuel L. Jackson")
                text = json.dumps({"substitutes": [named]})
            outputs.append(RawOutput(request.key, text, 10))
        return outputs

    def choice_probabilities(
        self, requests: Sequence[GenerationRequest], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        out = []
        for request in requests:
            self.sent.append(request.key)
            user = request.messages[-1]["content"].split("Query:")[0]  # the passage shown
            p = 0.8 if "Bruce Willis as David Dunn, a security" in user and "Touchstone" in user else 0.3
            p = 0.85 if p == 0.3 and "Bruce Willis" in user else p
            out.append({"yes": p, "no": 1 - p})
        return out

    def close(self) -> None:
        return None


def _settings(**verify: object) -> GroundedSettings:
    return GroundedSettings(progress=False, verify=VerifyConfig(relative_margin=None, **verify))  # type: ignore[arg-type]


def test_kept_negatives_carry_their_provenance_and_rejections_are_counted(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    result = run_grounded([ITEM], backend, RequestStore(tmp_path / "journal.jsonl"), _settings())
    negatives = result.rows[0]["negatives"]
    by_strategy = {n["strategy_type"]: n for n in negatives}
    assert set(by_strategy) == {"entity_shift", "relation_break"}
    swap = by_strategy["entity_shift"]
    assert "Bruce Willis" not in swap["text"] and "Samuel L. Jackson as David Dunn" in swap["text"]
    assert swap["edit"] == {
        "operation": "replace",
        "original": "Bruce Willis",
        "replacement": "Samuel L. Jackson",
        "mentions": 1,
    }
    assert (
        swap["span"] == "Bruce Willis" and swap["requirement"] == "the actor" and swap["judge_p_yes"] == 0.3
    )
    assert swap["source"] == "generated" and swap["target"] == "positive"
    # Dropping sentence 3 removes the answer and the actor: a relation break.
    assert "David Dunn" not in by_strategy["relation_break"]["text"]
    assert by_strategy["relation_break"]["edit"]["operation"] == "drop_sentence"
    reasons = result.counts["rejections"]
    assert reasons == {}  # the non-critical "Unbreakable" requirement is not edited
    assert result.counts["stats"]["requirements/not_critical"] == 1
    assert sum(reasons.values()) == result.counts["negatives_rejected"]
    assert result.decompositions[0]["judge_p_yes_positive"] == 0.8
    assert result.counts["queries_with_negatives"] == 1


def test_judge_calibration_rejects_negatives_the_judge_rates_like_the_positive(tmp_path: Path) -> None:
    result = run_grounded(
        [ITEM], ScriptedBackend(), RequestStore(tmp_path / "j.jsonl"), _settings(judge_margin=0.6)
    )
    assert result.rows[0]["negatives"] == []
    assert result.counts["rejections"]["judge_says_relevant"] >= 1


def test_resume_from_the_journal_sends_nothing_twice_and_gives_the_same_rows(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    first_backend = ScriptedBackend()
    first = run_grounded([ITEM], first_backend, RequestStore(journal), _settings())
    lines = journal.read_text().splitlines()
    assert len(lines) == len(set(first_backend.sent)) == len({json.loads(x)["key"] for x in lines})
    # Simulate a kill after the first two finished requests: keep only them, then run again.
    journal.write_text("\n".join(lines[:2]) + "\n")
    second_backend = ScriptedBackend()
    second = run_grounded([ITEM], second_backend, RequestStore(journal), _settings())
    assert len(second_backend.sent) == len(lines) - 2
    assert not set(second_backend.sent) & {json.loads(x)["key"] for x in lines[:2]}
    assert second.rows == first.rows
    third_backend = ScriptedBackend()
    assert run_grounded([ITEM], third_backend, RequestStore(journal), _settings()).rows == first.rows
    assert third_backend.sent == []


class RepeatingBackend(ScriptedBackend):
    """Proposes the original span as its substitute until told, in a feedback turn, that it cannot be used."""

    def __init__(self) -> None:
        super().__init__()
        self.substitute_turns: list[list[dict[str, str]]] = []

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        outputs = []
        for request in requests:
            if (
                "requirements" in request.messages[1]["content"]
                or '"Unbreakable"' in request.messages[1]["content"]
            ):
                outputs.extend(super().generate([request], schema, sampling))
                continue
            self.sent.append(request.key)
            self.substitute_turns.append(list(request.messages))
            told = len(request.messages) > 2 and "cannot be used" in request.messages[-1]["content"]
            text = json.dumps({"substitutes": ["Samuel L. Jackson" if told else "Bruce Willis"]})
            outputs.append(RawOutput(request.key, text, 10))
        return outputs


def test_a_substitute_retry_is_told_what_was_rejected(tmp_path: Path) -> None:
    backend = RepeatingBackend()
    result = run_grounded([ITEM], backend, RequestStore(tmp_path / "j.jsonl"), _settings())
    first, retry = backend.substitute_turns
    assert len(first) == 2 and [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == json.dumps({"substitutes": ["Bruce Willis"]})
    assert '"Bruce Willis"' in retry[3]["content"] and '"character"' in retry[3]["content"]
    assert result.counts["rejections"]["substitute_invalid"] == 1
    swap = next(n for n in result.rows[0]["negatives"] if n["strategy_type"] == "entity_shift")
    assert swap["edit"]["replacement"] == "Samuel L. Jackson"


def test_a_positive_with_no_evidence_is_counted_not_sent(tmp_path: Path) -> None:
    item = GroundedItem("q2", "Who wrote it?", (("p2", "short."),))
    backend = ScriptedBackend()
    result = run_grounded([item], backend, RequestStore(tmp_path / "j.jsonl"), _settings())
    assert result.rows == [{"query_id": "q2", "positive_id": "p2", "negatives": []}]
    assert result.counts["rejections"] == {"no_evidence": 1} and backend.sent == []


def test_the_next_positive_is_edited_while_fewer_than_min_kept(tmp_path: Path) -> None:
    second = PASSAGE.replace("Unbreakable (film).", "Unbreakable (2000 film).")
    item = GroundedItem(ITEM.query_id, ITEM.query, (("p1", PASSAGE), ("p2", second)), ITEM.answers)
    enough = run_grounded([item], ScriptedBackend(), RequestStore(tmp_path / "a.jsonl"), _settings())
    assert {n["positive_id"] for n in enough.rows[0]["negatives"]} == {"p1"}  # two kept from p1: enough
    assert enough.counts["stats"]["positives/edited"] == 1
    settings = GroundedSettings(
        progress=False, num_negatives=3, min_kept=3, verify=VerifyConfig(relative_margin=None)
    )
    more = run_grounded([item], ScriptedBackend(), RequestStore(tmp_path / "b.jsonl"), settings)
    negatives = more.rows[0]["negatives"]
    assert more.counts["stats"]["positives/edited"] == 2 and len(negatives) == 3  # num_negatives caps at 3
    assert [n["positive_id"] for n in negatives] == ["p1", "p1", "p2"]
    assert more.rows[0]["positive_id"] == "p1"


def test_the_sentence_stating_the_answer_is_dropped_by_code(tmp_path: Path) -> None:
    item = GroundedItem(
        ITEM.query_id, ITEM.query, ITEM.positives, ("Touchstone Pictures",), titles=("Unbreakable (film)",)
    )
    settings = _settings(judge=False)
    result = run_grounded([item], ScriptedBackend(), RequestStore(tmp_path / "j.jsonl"), settings)
    negatives = result.rows[0]["negatives"]
    assert [n.get("requirement_source") for n in negatives] == ["answer"]
    assert "Touchstone" not in negatives[0]["text"] and negatives[0]["strategy_type"] == "relation_break"
    # the swap leaves the answer's sentence as it was; the LLM's sentence drop leaves the answer
    assert result.counts["rejections"] == {"answer_context_kept": 1, "answer_leak": 1}


class MoreBackend(ScriptedBackend):
    """Names "Tom Hanks" when asked for more substitutes than "Samuel L. Jackson"."""

    def __init__(self) -> None:
        super().__init__()
        self.more_turns: list[list[dict[str, str]]] = []

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        outputs = []
        for request in requests:
            if "more real" not in request.messages[-1]["content"]:
                outputs.extend(super().generate([request], schema, sampling))
                continue
            self.sent.append(request.key)
            self.more_turns.append(list(request.messages))
            outputs.append(
                RawOutput(request.key, json.dumps({"substitutes": ["Samuel L. Jackson", "Tom Hanks"]}), 10)
            )
        return outputs


def test_a_query_short_of_min_kept_asks_for_more_substitutes_of_an_editable_span(tmp_path: Path) -> None:
    settings = GroundedSettings(progress=False, min_kept=3, verify=VerifyConfig(relative_margin=None))
    backend = MoreBackend()
    result = run_grounded([ITEM], backend, RequestStore(tmp_path / "j.jsonl"), settings)
    (turn,) = backend.more_turns
    assert [m["role"] for m in turn] == ["system", "user", "assistant", "user"]
    assert json.loads(turn[2]["content"]) == {"substitutes": ["Samuel L. Jackson"]}
    swaps = [
        n["edit"]["replacement"] for n in result.rows[0]["negatives"] if n["strategy_type"] == "entity_shift"
    ]
    assert swaps == ["Samuel L. Jackson", "Tom Hanks"]  # the repeated one is not applied twice
    assert result.counts["stats"]["substitutes/repeated"] == 1
    # with enough kept (the default min_kept=2), nothing more is asked
    enough = MoreBackend()
    run_grounded([ITEM], enough, RequestStore(tmp_path / "k.jsonl"), _settings())
    assert enough.more_turns == []


def test_a_query_short_of_min_kept_tries_query_named_spans_no_requirement_anchored(tmp_path: Path) -> None:
    query = "What is the name of Bruce Willis's character in Unbreakable, released by Touchstone Pictures?"
    item = GroundedItem("q3", query, ITEM.positives)  # no answers: the edit need not touch its sentence
    settings = GroundedSettings(
        progress=False, min_kept=3, fallback_spans=2, verify=VerifyConfig(relative_margin=None, judge=False)
    )
    result = run_grounded([item], ScriptedBackend(), RequestStore(tmp_path / "j.jsonl"), settings)
    fallback = [n for n in result.rows[0]["negatives"] if n.get("requirement_source") == "query_span"]
    assert [n["span"] for n in fallback] == ["Touchstone Pictures"]  # "Unbreakable" was judged not critical
    assert "by Miramax Films" in fallback[0]["text"] and fallback[0]["strategy_type"] == "entity_shift"
    assert result.counts["stats"]["requirements/query_span_fallback"] == 1
    none = GroundedSettings(progress=False, min_kept=3, fallback_spans=0, verify=settings.verify)
    again = run_grounded([item], ScriptedBackend(), RequestStore(tmp_path / "k.jsonl"), none)
    assert not any(n.get("requirement_source") == "query_span" for n in again.rows[0]["negatives"])


def test_no_answer_sentence_drop_when_the_title_names_the_answer() -> None:
    from causalneg.generation.grounded.pipeline import _about_the_answer

    assert _about_the_answer("Gerald McRaney", ["Gerald Lee McRaney"])
    assert not _about_the_answer("Chuck Taylor (wrestler)", ["15"])
    assert not _about_the_answer("", ["Gerald Lee McRaney"])


class FailingSubstitutes(ScriptedBackend):
    """Every LLM substitute is the span itself (rejected: it overlaps the original)."""

    def generate(
        self, requests: Sequence[GenerationRequest], schema: type[BaseModel], sampling: SamplingConfig
    ) -> list[RawOutput]:
        outputs = super().generate(requests, schema, sampling)
        return [
            RawOutput(o.key, json.dumps({"substitutes": ["Bruce Willis"]}), 10)
            if "substitutes" in o.text
            else o
            for o in outputs
        ]


def test_a_span_whose_llm_substitutes_fail_gets_siblings_from_the_neighbours(tmp_path: Path) -> None:
    neighbours = ("Glass (2019 film). Glass stars James McAvoy, Samuel L. Jackson and Anya Taylor-Joy.",)
    item = GroundedItem(ITEM.query_id, ITEM.query, ITEM.positives, ITEM.answers, neighbours=neighbours)
    # spaCy reads the title "Glass" as a person: the first sibling tried, rejected as no person's name
    settings = GroundedSettings(
        progress=False, corpus_substitutes=3, verify=VerifyConfig(relative_margin=None)
    )
    result = run_grounded([item], FailingSubstitutes(), RequestStore(tmp_path / "j.jsonl"), settings)
    swaps = [n for n in result.rows[0]["negatives"] if n["strategy_type"] == "entity_shift"]
    assert [n["edit"]["replacement"] for n in swaps] == ["James McAvoy", "Samuel L. Jackson"]
    assert all(n["substitute_source"] == "corpus" and "Bruce Willis" not in n["text"] for n in swaps)
    assert result.counts["stats"]["substitutes/from_corpus"] == 2
    assert any(r.get("substitute_source") == "corpus" for r in result.rejected)
    # off (the default of GroundedSettings) or without neighbours: the LLM's substitutes only
    off = run_grounded([item], FailingSubstitutes(), RequestStore(tmp_path / "k.jsonl"), _settings())
    assert not [n for n in off.rows[0]["negatives"] if n["strategy_type"] == "entity_shift"]
