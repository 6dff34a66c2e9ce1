"""Edits applied by code, so that every word outside the edit is the corpus's own (DESIGN §1a, grounded edits).

Two operations:

- :func:`replace_mentions`: every mention of a span becomes a substitute. Mentions are matched case-insensitively
  on word boundaries, with whitespace runs and a possessive ``'s`` tolerated. Also mentions:
  - for a person's name, the name with middle names ("Lucy Muringo Gichuhi" for "Lucy Gichuhi", "Brian Stepanek"
    for "Brian Patrick Stepanek"), replaced by the substitute, and the surname alone ("Willis" for "Bruce
    Willis"), replaced by the substitute's surname (when the substitute is a person's name itself);
  - an abbreviation the passage defines right after a mention ("castration-resistant prostate cancer (CRPC)"):
    the parenthesis goes, and every later "CRPC" (or plural "iPSCs" / singular "iPSC") becomes the substitute.
  When span and substitute differ in only a part, that part is what is replaced (:func:`edit_target`):
  "HSV-2 lesions" -> "HSV-1 lesions" replaces every "HSV-2", and "IL-18 mRNA expression" -> "IL-22" every
  "IL-18", so that no bare mention of the changed entity survives.
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

# Demonym and adjective endings of a proper name ("Russia" -> "Russian", "Russians"; "Japan" -> "Japanese").
DERIVED_SUFFIXES = r"(?:ns?|ans?|ians?|ese|ish|is?|ic)"
_WORD = re.compile(r"[0-9A-Za-zÀ-ÖØ-öø-ÿ][\w'’.-]*")


@dataclass(frozen=True)
class Edit:
    """The result of one edit: the new ``text`` and what changed (``mentions`` replaced or the dropped sentence)."""

    text: str
    operation: str  # replace | drop_sentence
    original: str  # the replaced span, or the dropped sentence
    replacement: str  # the substitute ('' for a drop)
    mentions: int  # occurrences changed
    aliases: tuple[str, ...] = ()  # other forms replaced too: abbreviations, name variants

    def changed_fraction(self, before: str) -> float:
        """Share of the original passage's characters the edit touched (a size bound for verification)."""
        return min(1.0, len(self.original) * max(self.mentions, 1) / max(len(before), 1))


_COMMON_NOUN = re.compile(r"[a-z]{3,}")


def _pattern(phrase: str) -> re.Pattern[str]:
    """``phrase`` on word boundaries, case-insensitive, with whitespace runs and ``'``/``’`` tolerated; a lower-case
    last word also in its plural or singular ("elongation rate" matches "elongation rates", "T cells" "T cell")."""
    words = phrase.replace("’", "'").split()
    escaped = [re.escape(w) for w in words]
    if words and _COMMON_NOUN.fullmatch(words[-1]):
        last = words[-1]
        stem = last[:-1] if last.endswith("s") and not last.endswith("ss") else last
        escaped[-1] = re.escape(stem) + "(?:s|es)?"
    body = r"\s+".join(escaped).replace("'", "['’]")
    return re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE)


def _surname_pattern(surname: str) -> re.Pattern[str]:
    """A surname alone, as a name is written: capitalised, case-sensitive ("Hall" in "Toad Hall", not the "hall"
    of "a residential hall")."""
    return re.compile(rf"(?<![\w]){re.escape(surname)}(?![\w])")


def _inflected(mention: str, target: str, replacement: str) -> str:
    """``replacement`` in the number of ``mention``: a plural mention of a singular target gets a plural
    ("elongation rates" -> "transcription rates" for "elongation rate" -> "transcription rate")."""
    last = replacement.split()[-1] if replacement.split() else ""
    plural_mention = mention.lower().endswith("s") and not target.lower().endswith("s")
    if plural_mention and _COMMON_NOUN.fullmatch(last) and not last.endswith("s"):
        if last.endswith("y") and last[-2:-1] not in "aeiou":
            return replacement[:-1] + "ies"
        return replacement + ("es" if last.endswith(("ch", "sh", "x", "z")) else "s")
    return replacement


def surname_of(name: str) -> str | None:
    words = name.split()
    if len(words) < 2:
        return None
    last = words[-1].rstrip(".,")
    if last.lower() in ("jr", "sr", "ii", "iii") and len(words) > 2:
        last = words[-2]
    return last if len(last) >= 3 and last[0].isupper() else None


_ABBREVIATION = re.compile(r"\s*\(([A-Za-z][A-Za-z0-9-]{1,9})\)")
_CODE_PREFIX = re.compile(r"[A-Za-z]+")
MAX_CORE_WORDS = 2  # a shared frame reduces the edit only to a core this short ("HSV-2" in "HSV-2 lesions")


def is_code(word: str) -> bool:
    """A gene-, protein- or model-like token: letters and digits ("IL-18", "Rpl38", "CDX2")."""
    return any(c.isdigit() for c in word) and any(c.isalpha() for c in word)


def edit_target(span_text: str, substitute: str, person: bool = False) -> tuple[str, str]:
    """``(target, replacement)``: the part of ``span_text`` that ``substitute`` changes, and what replaces it.

    - Shared leading/trailing words are a frame: "HSV-2 lesions" -> "HSV-1 lesions" gives ("HSV-2", "HSV-1"),
      "1952 in Kingston" -> "1967 in Kingston" gives ("1952", "1967"), when both cores have 1-2 words.
    - A one-token code for a code of the span with the same letters: "IL-18 mRNA expression" -> "IL-22" gives
      ("IL-18", "IL-22"); the 1.5B often names the entity inside a phrase.
    - Otherwise the whole span and the whole substitute; also for a ``person`` whose surname is kept (a first
      name alone would replace other people's: "Edward" in "Edward Stanley").
    """
    a, b = span_text.split(), substitute.split()
    if person and len(a) > 1 and a[-1].lower() == b[-1].lower():
        return (
            span_text,
            substitute,
        )  # "Edward Stafford" -> "Diana Stafford": a first name is no entity of its own
    head = 0
    while head < min(len(a), len(b)) and a[head].lower() == b[head].lower():
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail].lower() == b[-1 - tail].lower():
        tail += 1
    core_a, core_b = a[head : len(a) - tail], b[head : len(b) - tail]
    if (head or tail) and 1 <= len(core_a) <= MAX_CORE_WORDS and 1 <= len(core_b) <= MAX_CORE_WORDS:
        target = " ".join(core_a)
        if content_tokens(target):
            return target, " ".join(core_b)
    if len(b) == 1 and is_code(b[0]) and len(a) > 1:
        prefix = _CODE_PREFIX.match(b[0])
        same = [
            w.strip(",;:()")
            for w in a
            if is_code(w)
            and prefix
            and (m := _CODE_PREFIX.match(w))
            and m.group(0).lower() == prefix.group(0).lower()
        ]
        if len(same) == 1:
            return same[0], b[0]
    return span_text, substitute


def abbreviations(text: str, phrase: str) -> list[str]:
    """Abbreviations ``text`` defines right after a mention of ``phrase``: "... cancer (CRPC)" -> ["CRPC"].

    An abbreviation has 2-10 characters, with at least two capitals or letters and digits ("TNFAIP3 (A20)"), so
    "(film)" or "(2009)" are not.
    """
    found = []
    for match in _pattern(phrase).finditer(text):
        defined = _ABBREVIATION.match(text, match.end())
        if defined and is_abbreviation(defined.group(1)):
            found.append(defined.group(1))
    return list(dict.fromkeys(found))


def names_before(text: str, phrase: str) -> list[str]:
    """One-word names ``text`` gives right before a parenthesised mention of ``phrase``: "A20 (TNFAIP3)" ->
    ["A20"] for "TNFAIP3". Such a name (a code or two capitals or more: :func:`is_abbreviation`) is the same
    entity under another name, so the edit replaces it too."""
    found = []
    for match in re.finditer(rf"(?<![\w-])([\w-]+)\s*\(\s*{re.escape(phrase)}s?\s*\)", text, re.IGNORECASE):
        name = match.group(1)
        if is_abbreviation(name) and name.lower() != phrase.lower():
            found.append(name)
    return list(dict.fromkeys(found))


def _abbreviation_pattern(abbreviation: str) -> re.Pattern[str]:
    """The abbreviation with its plural ("iPSC" / "iPSCs"), case-sensitive, on word boundaries."""
    stem = (
        abbreviation[:-1]
        if abbreviation.endswith("s") and sum(c.isupper() for c in abbreviation) >= 2
        else abbreviation
    )
    return re.compile(rf"(?<![\w]){re.escape(stem)}s?(?![\w])")


def is_abbreviation(word: str) -> bool:
    """One token that can stand for a longer name: a code ("IL-18", "Rpl38") or two capitals or more ("HGPS")."""
    return " " not in word.strip() and (is_code(word) or sum(c.isupper() for c in word) >= 2)


def _long_form_start(short: str, candidate: str) -> int | None:
    """Where in ``candidate`` the long form of ``short`` starts (Schwartz & Hearst 2003), or ``None``.

    Every letter and digit of ``short`` is found in ``candidate``, right to left and in order, and the first one
    starts a word: "Rpl38" in "... mutations of the Ribosomal Protein L38" starts at "Ribosomal"; "IL-18" in
    "interleukin-18" at its "i".
    """
    s, c = len(short) - 1, len(candidate) - 1
    while s >= 0:
        char = short[s].lower()
        if not char.isalnum():
            s -= 1
            continue
        while c >= 0 and (candidate[c].lower() != char or (s == 0 and c > 0 and candidate[c - 1].isalnum())):
            c -= 1
        if c < 0:
            return None
        c -= 1
        s -= 1
    return c + 1


def long_forms(text: str, short: str) -> list[str]:
    """The long forms ``text`` gives for the abbreviation ``short`` (:func:`is_abbreviation`).

    - Defined by a parenthesis, "Ribosomal Protein L38 (Rpl38)": the shortest run of the preceding
      ``min(len + 5, 2 len)`` words that spells ``short`` (:func:`_long_form_start`).
    - Written out in one word with the same number, "interleukin-18" or "interleukin 18" for "IL-18", also with
      the abbreviation inside: "Interleukin (IL)-18".

    A long form is longer than ``short`` and not ``short`` itself; each is a mention of the same entity.
    """
    if not is_abbreviation(short):
        return []
    found: list[str] = []
    letters = sum(c.isalnum() for c in short)
    window = min(letters + 5, 2 * letters)
    for match in re.finditer(rf"\(\s*{re.escape(short)}s?\s*\)", text):
        words = text[: match.start()].split()[-window:]
        ends = [i for i, w in enumerate(words) if w.endswith((".", ";", ":", "!", "?"))]
        words = words[ends[-1] + 1 :] if ends else words  # within the sentence that defines it
        for size in range(1, len(words) + 1):
            candidate = " ".join(words[-size:])
            start = _long_form_start(short, candidate)
            if start == 0:
                found.append(candidate.strip(",;:"))
                break
    number = re.search(r"[-\s]?(\d+[A-Za-z]?)$", short)
    if number:
        letters_part = short[: number.start()]
        pattern = (
            rf"(?<![\w-])([A-Za-z]{{{len(letters_part) + 2},}})[-\s]{re.escape(number.group(1))}(?![\w])"
        )
        for match in re.finditer(pattern, text):
            if _long_form_start(letters_part, match.group(1)) == 0:
                found.append(match.group(0))
        letters_clean = letters_part.rstrip("- ")
        inline = (  # "Interleukin (IL)-18": the abbreviation defined inside the written-out name
            rf"(?<![\w-])([A-Za-z]{{{len(letters_clean) + 2},}})\s*\(\s*{re.escape(letters_clean)}\s*\)"
            rf"[-\s]?{re.escape(number.group(1))}(?![\w])"
        )
        for match in re.finditer(inline, text):
            if _long_form_start(letters_clean, match.group(1)) == 0:
                found.append(match.group(0))
    return [f for f in dict.fromkeys(found) if len(f) > len(short) and f.lower() != short.lower()]


def _name_variants(name: str) -> re.Pattern[str] | None:
    """A person's name with 0-2 other capitalised words between first name and surname."""
    words, surname = name.split(), surname_of(name)
    if surname is None or len(words) < 2:
        return None
    middle = r"(?:\s+[A-Z][\w.'’-]*){0,2}"
    return re.compile(rf"(?<![\w]){re.escape(words[0])}{middle}\s+{re.escape(surname)}(?![\w])")


def replace_mentions(text: str, span: Span, substitute: str) -> Edit:
    """Replace every mention of ``span`` (module docstring: the changed part, name variants, surname alone,
    defined abbreviations) with ``substitute``."""
    substitute = " ".join(substitute.split())
    defined = abbreviations(text, span.text)
    # A span that defines an abbreviation is replaced whole, so that its "(ABBR)" goes with it.
    target, replacement = (
        (span.text, substitute) if defined else edit_target(span.text, substitute, span.is_person)
    )
    pattern = _pattern(target)
    written_out = long_forms(text, target)
    if written_out:  # "Ribosomal Protein L38 (Rpl38)" and "interleukin-18": the same entity, replaced too
        forms = "|".join(_pattern(f).pattern for f in sorted(written_out, key=len, reverse=True))
        defined_here = rf"(?:\s*\(\s*{re.escape(target)}s?\s*\))?"
        pattern = re.compile(rf"(?:{forms}){defined_here}|{pattern.pattern}", re.IGNORECASE)
    if defined:  # "cancer (CRPC)" -> "substitute": the definition goes with the mention
        alternatives = "|".join(re.escape(a) for a in defined)
        pattern = re.compile(rf"(?:{pattern.pattern})(?:\s*\((?:{alternatives})\))?", re.IGNORECASE)
    before = names_before(text, target)
    if before:  # "A20 (TNFAIP3)" -> "substitute": the other name goes with the mention, and every later "A20"
        alternatives = "|".join(re.escape(a) for a in before)
        pattern = re.compile(
            rf"(?:{alternatives})\s*\(\s*(?:{pattern.pattern})\s*\)|{pattern.pattern}", re.IGNORECASE
        )
    new, count = pattern.subn(lambda m: _inflected(m.group(0), target, replacement), text)
    aliases: list[str] = list(written_out)
    surname = surname_of(span.text) if span.is_person and target == span.text else None
    variants = _name_variants(span.text) if surname else None
    if variants is not None:

        def variant(match: re.Match[str]) -> str:
            aliases.append(match.group(0))
            return replacement

        new, more = variants.subn(variant, new)
        count += more
    # Only a person's name has a surname to put in: "Cabin claimed ..." for "Haley claimed ..." is nonsense. Any
    # other substitute leaves the surname, and verification rejects the edit (mention_left).
    substitute_surname = surname_of(replacement) if looks_like_person_name(replacement) else None
    if surname and substitute_surname:
        new, more = _surname_pattern(surname).subn(lambda _m: substitute_surname, new)
        count += more
    for abbreviation in [*defined, *before]:
        new, more = _abbreviation_pattern(abbreviation).subn(lambda _m: replacement, new)
        count += more
    return Edit(
        new, "replace", target, replacement, count, tuple(dict.fromkeys([*defined, *before, *aliases]))
    )


def drop_sentence(text: str, sentence: str) -> Edit:
    """``text`` without ``sentence`` (sentences re-joined with single spaces)."""
    sentences = split_sentences(text)
    kept = [s for s in sentences if s != sentence]
    return Edit(" ".join(kept), "drop_sentence", sentence, "", len(sentences) - len(kept))


def drop_sentences(text: str, sentences: list[str]) -> Edit:
    """``text`` without each of ``sentences`` (the answer-stating ones: :func:`drop_sentence` for several)."""
    before = split_sentences(text)
    kept = [s for s in before if s not in sentences]
    return Edit(" ".join(kept), "drop_sentence", " ".join(sentences), "", len(before) - len(kept))


def body_of(passage: str, title: str) -> str:
    """``passage`` without its leading ``"title. "`` (the whole passage when it does not start with it)."""
    return passage[len(title) + 2 :] if title and passage.startswith(f"{title}. ") else passage


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
    surname = surname_of(span.text) if span.is_person else None
    if surname and _surname_pattern(surname).search(text) and surname.lower() not in substitute.lower():
        left.append(surname)
    sub_words = {w.lower() for w in _WORD.findall(substitute)} | set(content_tokens(substitute))
    for word in _WORD.findall(span.text):  # a derived form of a proper name: "Russian(s)" for "Russia"
        if len(word) >= 4 and word[0].isupper() and word.lower() not in sub_words:
            derived = re.search(rf"(?<![\w]){re.escape(word)}{DERIVED_SUFFIXES}(?![\w])", text)
            if derived:
                left.append(derived.group(0))
    if document_frequency is None:
        return left
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
