"""Corpus siblings: substitutes taken from the query's BM25 neighbours, for a span whose LLM substitutes all failed.

The 1.5B's substitutes for scientific terms mostly fail the checks (SciFact, 64 queries: 165 overlapped the span,
"Sepsis" -> "Sepsis-3"; 113 named something already in the passage; 173 were written by no corpus document,
"oocyte reserve"), so half of the queries kept nothing. The passages that BM25 ranks just below the positives are
about the same topic and name its siblings: other interleukins beside "IL-18", other people beside a person.
A sibling is a code with the span's letters, or a person or place of those neighbours (no LLM); the ones
most similar to the span under the encoder are tried first, and each goes through every check an LLM substitute
goes through (the LLM's same-thing check included), then the edit's verification and the judge. Every word of the
edit is then the corpus's own, which is the point of a grounded edit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from causalneg.generation.grounded.edits import is_code
from causalneg.generation.grounded.spans import Span, extract_spans
from causalneg.generation.grounded.verify import NUMERIC_KINDS

_CODE_STEM = re.compile(r"^([A-Za-z]+)[-]?(\d+)$")


def _stem(code: str) -> str | None:
    """The letters of a code before its number ("IL-18" -> "il", "CDX2" -> "cdx"; "H3K9me3" -> None)."""
    match = _CODE_STEM.match(code)
    return match.group(1).lower() if match else None


# Span kinds whose siblings are taken from the neighbours besides codes. A first version also took noun phrases,
# names and organizations: on SciFact they were mostly junk ("Risk" -> "Life", "Mental" -> "Medical",
# "B-Type Natriuretic Peptide" -> "Serum"), since spaCy's labels there are close to random.
SIBLING_KINDS = frozenset({"person", "place"})


def same_kind(span: Span, candidate: Span) -> bool:
    """Whether ``candidate`` is the kind of thing ``span`` is: a code with the same letters ("IL-6" for "IL-18"),
    else a person for a person, a place for a place (:data:`SIBLING_KINDS`). Numbers and dates have no siblings
    here: the LLM's numeric substitutes pass the checks ("1942" -> "1941")."""
    if span.kind in NUMERIC_KINDS:
        return False
    if is_code(span.text) and " " not in span.text:
        stem = _stem(span.text)
        return stem is not None and _stem(candidate.text) == stem
    if span.kind not in SIBLING_KINDS or (is_code(candidate.text) and " " not in candidate.text):
        return False
    return candidate.kind == span.kind and (candidate.is_person or span.kind != "person")


def _code_siblings(stem: str, text: str) -> list[str]:
    """Codes of ``text`` with the letters ``stem`` and a number, as written ("IL-6", "il6")."""
    return re.findall(rf"(?<![\w-]){re.escape(stem)}-?\d+(?![\w-])", text, flags=re.IGNORECASE)


def sibling_candidates(span: Span, neighbours: Sequence[str], use_spacy: bool = True) -> list[str]:
    """Spans of ``neighbours`` (in their order) of ``span``'s kind that neither contain nor sit inside the span.

    A one-word code's siblings are the neighbours' codes with its letters, found by pattern (the span
    extractor reads "IL-6 and IL-10" as one name); other spans come from :func:`~.spans.extract_spans`."""
    own = span.text.lower()
    stem = _stem(span.text) if is_code(span.text) and " " not in span.text else None
    found: dict[str, str] = {}
    for text in neighbours:
        text = " ".join(text.split())
        if stem is not None:
            spans = [Span(code, span.kind, 0) for code in _code_siblings(stem, text)]
        else:
            spans = extract_spans(text, use_spacy)
        for candidate in spans:
            low = candidate.text.lower()
            if low in found or f" {own} " in f" {low} " or f" {low} " in f" {own} ":
                continue  # whole words: "IL-1" is a sibling of "IL-18", "carotid plaques" is not one of
            if not same_kind(span, candidate):  # "plaques"
                continue
            found[low] = candidate.text
    return list(found.values())


def rank_siblings(
    span: Span, candidates: Sequence[str], similarity: Callable[[str, list[str]], list[float]] | None
) -> list[str]:
    """``candidates`` most similar to the span first (cos under the encoder); in their order without one."""
    if similarity is None or not candidates:
        return list(candidates)
    scores = similarity(span.text, list(candidates))
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [candidates[i] for i in order]
