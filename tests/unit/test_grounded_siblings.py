"""Corpus siblings (substitutes from the query's BM25 neighbours) and the peripheral-edit rule, with no LLM."""

from __future__ import annotations

from causalneg.generation.grounded.siblings import rank_siblings, same_kind, sibling_candidates
from causalneg.generation.grounded.spans import Span, spacy_available
from causalneg.generation.grounded.verify import VerifyConfig, check_core, core_sentences

NEIGHBOURS = (
    "Interleukin-6 in atherosclerosis. IL-6 and IL-10 levels rose in plaques, while IL-1 and TNF did not.",
    "Cytokines in plaques. IL-18 and IL-6 were measured in carotid plaques of 40 patients with CDX4 staining.",
)


def test_a_code_has_siblings_with_its_own_letters_only() -> None:
    span = Span("IL-18", "noun_phrase", 0)
    found = sibling_candidates(span, NEIGHBOURS, use_spacy=False)
    assert found[:3] == ["IL-6", "IL-10", "IL-1"]  # neighbours' order, first mention, deduplicated
    assert "IL-18" not in found and "CDX4" not in found and "TNF" not in found
    assert same_kind(span, Span("IL-22", "name", 0)) and not same_kind(span, Span("H3K9me3", "name", 0))


def test_a_sibling_has_the_span_kind_and_neither_contains_nor_sits_in_it() -> None:
    span = Span("Kingston", "place", 0)
    texts = ("Kingston Harbour lies south of Kingston. Montego Bay and Ocho Rios are on the north coast.",)
    if spacy_available():  # places are spaCy's entities
        found = sibling_candidates(span, texts)
        assert "Montego Bay" in found and not any("Kingston" in f for f in found)
    # noun phrases get none: on SciFact their siblings were mostly junk ("Risk" -> "Life")
    assert sibling_candidates(Span("carotid plaques", "noun_phrase", 0), texts, use_spacy=False) == []
    assert not same_kind(Span("LSD1", "person", 0), Span("Tom Hanks", "person", 0))
    assert not same_kind(
        Span("1942", "date", 0), Span("1941", "date", 0)
    )  # the LLM's numbers pass the checks
    assert not same_kind(Span("Kingston", "place", 0), Span("Jamaica Gleaner", "organization", 0))
    assert same_kind(Span("Kingston", "place", 0), Span("Montego Bay", "place", 0))


def test_siblings_most_similar_to_the_span_come_first() -> None:
    def similarity(query: str, texts: list[str]) -> list[float]:
        return [0.9 if t == "IL-10" else 0.1 for t in texts]

    span = Span("IL-18", "noun_phrase", 0)
    assert rank_siblings(span, ["IL-6", "IL-10", "IL-1"], similarity) == ["IL-10", "IL-6", "IL-1"]
    assert rank_siblings(span, ["IL-6", "IL-10"], None) == ["IL-6", "IL-10"]


def test_an_edit_must_change_the_core_sentences_of_a_long_passage() -> None:
    sentences = [f"Sentence {i} about the cohort." for i in range(8)]
    similarities = [0.1, 0.2, 0.9, 0.3, 0.8, 0.1, 0.0, 0.2]
    cfg = VerifyConfig()
    core = core_sentences(sentences, similarities, cfg)
    assert core == [sentences[2], sentences[4]]
    both_changed = " ".join(s for i, s in enumerate(sentences) if i not in (2, 4))
    assert check_core(both_changed, core).kept
    one_left = " ".join(s for i, s in enumerate(sentences) if i != 2)
    verdict = check_core(one_left, core)
    assert verdict.reason == "peripheral_edit" and "Sentence 4" in verdict.detail
    # short passages (HotpotQA paragraphs) and core_sentences=0 have no core
    assert core_sentences(sentences[:6], similarities[:6], cfg) == []
    assert core_sentences(sentences, similarities, VerifyConfig(core_sentences=0)) == []
