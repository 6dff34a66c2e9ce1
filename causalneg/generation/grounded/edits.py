"""Edits applied by code, so that every word outside the edit is the corpus's own (DESIGN §1a, grounded edits).

Two operations:

- :func:`replace_mentions`: every mention of a span becomes a substitute. Mentions are matched case-insensitively
  on word boundaries, with whitespace runs and a possessive ``'s`` tolerated; for a person's name the surname
  alone is a mention too ("Willis" for "Bruce Willis"), replaced by the substitute's surname (when the
  substitute is a person's name itself).
- :func:`drop_sentence`: the sentence that carries the evidence is removed.

:func:`remaining_mentions` tells what is left of a replaced span: its full form, the surname of a person, and
any *distinctive* token of it (capitalised, not a stop word, not part of the substitute and rare in the corpus:
a document frequency below ``rare_df``). "Arthur's Magazine" replaced by "Godey's Lady's Book" leaves no
mention when the passage does not say "Arthur" any more; "Magazine" alone is a common word, not a mention.
A token of the span that the *query* names counts too, unless it is common in the corpus (document frequency of
``query_df`` or more) or the substitute has it: "OCT4 and SOX2" -> "KLF4" leaves "OCT4" in "unlike in mouse, OCT4
has not been replaced", and the passage still speaks of what the query asks about.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from causalneg.generation.grounded.spans import (
    STOP_WORDS,
    Span,
    content_tokens,
    looks_like_person_name,
    split_sentences,
)

_WORD = re.compile(r"[0-9A-Za-zÀ-ÖØ-öø-ÿ][\w'’.-]*")


@dataclass(frozen=True)
class Edit:
    """The result of one edit: the new ``text`` and what changed (``mentions`` replaced or the dropped sentence)."""

    text: str
    operation: str  # replace | drop_sentence
    original: str  # the replaced span, or the dropped sentence
    replacement: str  # the substitute ('' for a drop)
    mentions: int  # occurrences changed

    def changed_fraction(self, before: str) -> float:
        """Share of the original passage's characters the edit touched (a size bound for verification)."""
        return min(1.0, len(self.original) * max(self.mentions, 1) / max(len(before), 1))


def _pattern(phrase: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in phrase.replace("’", "'").split()]
    body = r"\s+".join(words).replace("'", "['’]")
    return re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE)


def _surname(name: str) -> str | None:
    words = name.split()
    if len(words) < 2:
        return None
    last = words[-1].rstrip(".,")
    if last.lower() in ("jr", "sr", "ii", "iii") and len(words) > 2:
        last = words[-2]
    return last if len(last) >= 3 and last[0].isupper() else None


def replace_mentions(text: str, span: Span, substitute: str) -> Edit:
    """Replace every mention of ``span`` (and, for a person, of the surname alone) with ``substitute``."""
    substitute = " ".join(substitute.split())
    new, count = _pattern(span.text).subn(lambda _m: substitute, text)
    surname = _surname(span.text) if span.is_person else None
    # Only a person's name has a surname to put in: "Cabin claimed ..." for "Haley claimed ..." is nonsense. Any
    # other substitute leaves the surname, and verification rejects the edit (mention_left).
    substitute_surname = _surname(substitute) if looks_like_person_name(substitute) else None
    if surname and substitute_surname:
        new, more = _pattern(surname).subn(lambda _m: substitute_surname, new)
        count += more
    return Edit(new, "replace", span.text, substitute, count)


def drop_sentence(text: str, sentence: str) -> Edit:
    """``text`` without ``sentence`` (sentences re-joined with single spaces)."""
    sentences = split_sentences(text)
    kept = [s for s in sentences if s != sentence]
    return Edit(" ".join(kept), "drop_sentence", sentence, "", len(sentences) - len(kept))


def mentions(text: str, phrase: str) -> bool:
    """Whether ``text`` mentions ``phrase`` (case-insensitive, on word boundaries)."""
    return bool(phrase.strip()) and _pattern(phrase).search(text) is not None


def sentence_with(text: str, span_text: str) -> str | None:
    """The first sentence of ``text`` that mentions ``span_text``."""
    pattern = _pattern(span_text)
    return next((s for s in split_sentences(text) if pattern.search(s)), None)


def remaining_mentions(
    text: str,
    span: Span,
    substitute: str,
    document_frequency: Callable[[str], float] | None = None,
    rare_df: float = 0.002,
    query: str = "",
    query_df: float = 0.05,
) -> list[str]:
    """What of ``span`` is still mentioned in ``text`` after it was replaced by ``substitute`` (empty = gone)."""
    left = []
    if _pattern(span.text).search(text):
        left.append(span.text)
    surname = _surname(span.text) if span.is_person else None
    if surname and _pattern(surname).search(text) and surname.lower() not in substitute.lower():
        left.append(surname)
    if document_frequency is None:
        return left
    sub_words = {w.lower() for w in _WORD.findall(substitute)} | set(content_tokens(substitute))
    asked = set(content_tokens(query))
    text_tokens = set(content_tokens(text))
    for word in _WORD.findall(span.text):
        clean = word.strip("'’.-").removesuffix("'s").removesuffix("’s")
        low = clean.lower()
        if len(clean) < 3 or low in STOP_WORDS or low in sub_words or clean in left:
            continue
        token = (content_tokens(clean) or [low])[0]
        if token in asked and token not in sub_words:  # a query-named token: a mention unless common
            if token in text_tokens and document_frequency(low) < query_df:
                left.append(clean)
            continue
        if not clean[0].isupper() or document_frequency(low) >= rare_df:
            continue
        if re.search(rf"(?<![\w]){re.escape(clean)}(?![\w])", text):
            left.append(clean)
    return left
