"""Filters for LLM outputs: pure functions that keep or reject, always with a reason.

Request level (:func:`parse_output`): ``backend_error``, ``invalid_json`` (not parseable, e.g. cut by the token
limit), ``schema_violation`` (parses but fails the Pydantic model or its semantic validators).

Negative level (:func:`check_negative`, in this order; ``invalid_reference`` comes first, from
:func:`causalneg.generation.schemas.reference_error`: the negative names no strategy of a *critical* node):

- ``empty``; ``too_short`` (fewer than ``min_words`` words, or below the length band); ``too_long`` (above the
  band, or as long as the schema bound ``NEGATIVE_TEXT``: cut by it). The band is ``[min_chars, max_chars]``,
  or, with ``length_from_corpus``, ``corpus_chars``: the ``length_quantiles`` (default 5th-95th percentile) of
  the corpus's own passage lengths (``Passage.full_text``, characters), computed once by ``stage=generate``
  (:func:`corpus_length_band`), so that length does not tell a generated negative from a corpus passage.
- ``meta_talk``: talks about the passage/query (``the passage does not mention``, ``this text``, ``the query``)
  or about itself as a model's reply (``I made a mistake``, ``I'm sorry``, ``I apologize``, ``As requested``,
  ``Here is``) instead of being a passage (:data:`META_PATTERNS`). Narrative prose such as ``the album did not
  include the single`` or ``The document was signed in 1648`` is not meta talk.
- ``looping``: repeated word trigrams or a highly compressible text.
- ``copies_positive``: a near-duplicate (Jaccard >= ``near_duplicate``) or an excerpt (containment >=
  ``excerpt``) of the positive: strict, since a copy of the positive answers the query.
- ``copies_candidate``: a near-verbatim copy of a mined candidate: aligned word by word to the candidate, the
  negative adds or replaces no content word (one outside :data:`FUNCTION_WORDS`), i.e. it is the candidate
  itself, an excerpt of it, or it with function words changed. A rewrite of a candidate is the intended output
  (the official prompt prefers it, for corpus style) and may be a minimal edit: a one-entity swap is kept.
- ``copies_query``, ``copies_prompt``: containment in the query / in the prompt's instructions.
- ``answer_leak``: the text names a known answer (:func:`leaked_answer`).
- ``duplicate`` (of a negative already kept for the query) and, in a batch step with an encoder,
  ``similar_to_positive``.

Near-duplicates use character n-gram shingles of the normalised text (lower case, alphanumerics, single
spaces): ``jaccard(A, B) = |A ∩ B| / |A ∪ B|`` and ``containment(A in B) = |A ∩ B| / |A|`` (a negative that is
an excerpt of the positive has containment ~1 but a low Jaccard).

Answer matching (:func:`leaked_answer`, :func:`answer_aliases`) compares token sequences in one canonical form
(:func:`normalize_answer`): case folded, diacritics stripped (NFKD without combining marks: ``Zürich`` =
``Zurich``), punctuation as token breaks, articles dropped (SQuAD), numbers as digits (``three`` = ``3``,
``twenty-one`` = ``21``, ``1,000`` = ``1000``), whole tokens only. Skipped: answers ``yes``/``no`` and answers
the query itself names (an on-topic passage cannot avoid them). A mention that is part of a longer proper name
is a namesake, not a leak: the mention is capitalised and directly followed by another capitalised word
(``Paris Hilton``), or preceded by one that does not start a sentence (``Lake Geneva``), or followed by
``, <Capitalised>`` (``Paris, Texas``) unless that qualifier continues a list (``Paris, London and Rome``) or
is named by the query (``Paris, France`` for a query about France).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import string
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ValidationError

from causalneg.generation.backends.base import RawOutput
from causalneg.generation.schemas import NEGATIVE_TEXT

REQUEST_REASONS = ("backend_error", "invalid_json", "schema_violation")
NEGATIVE_REASONS = (
    "invalid_reference",
    "empty",
    "too_short",
    "too_long",
    "meta_talk",
    "looping",
    "copies_positive",
    "copies_candidate",
    "copies_query",
    "copies_prompt",
    "answer_leak",
    "duplicate",
    "similar_to_positive",
)

_ABOUT = r"(does not|doesn't|do not|is about|is not|discusses|mentions|talks about|focuses on|provides information)"
META_PATTERNS = [
    # about the passage or the query
    r"\b(this|the above|the given|the provided|the original|the positive|the relevant|the other) "
    r"(passage|text|document|paragraph|snippet|article)s?\b",
    rf"^\s*the (passage|paragraph|text|snippet)s? {_ABOUT}\b",
    r"\b(this|your|the given|the above|the user'?s?) (query|question)\b",
    r"\bthe query\b",
    r"\b(it|this) (does not|doesn't|fails to) (mention|answer|address|discuss)\b",
    r"\bthe (passage|paragraph|snippet) (does not|doesn't|fails to)\b",
    r"\bno (information|mention|details?) (about|of|on|regarding)\b",
    r"\b(hard )?negative (passage|example)s?\b",
    r"\b(counterfactual|break strategy|requirement n\d)\b",
    r"\bnot relevant\b",
    # the model talking about itself or to the user
    r"\b(as an ai|i cannot|i can't|i hope (this|that) helps)\b",
    r"(^|[.!?:]\s+)as requested\b",
    r"\b(i|we) (have )?made (a|an) (mistake|error)\b",
    r"\b(i'?m|i am|we'?re|we are) (so |very |truly )?sorry\b",
    r"\b(i|we) (sincerely )?apologi[sz]e\b|\bmy apologies\b",
    r"\b(let me|i will|i'll) (rewrite|revise|correct|fix|try again|provide)\b",
    r"\bcorrected (passage|version|text)\b",
    r"^\s*(here is|here are|here's|sure\b)",
]
_META = re.compile("|".join(f"(?:{p})" for p in META_PATTERNS), re.IGNORECASE)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_PUNCT = str.maketrans({c: " " for c in string.punctuation})

# Function words: a rewrite of a candidate that adds or replaces only these is still a copy of it.
FUNCTION_WORDS = frozenset(
    {
        "a", "an", "the", "and", "or", "but", "nor", "so", "yet", "of", "in", "on", "at", "to", "for", "from", "by",
        "with", "without", "about", "into", "onto", "over", "under", "after", "before", "between", "during",
        "through", "than", "then", "as", "if", "when", "while", "where", "which", "who", "whom", "whose", "that",
        "this", "these", "those", "it", "its", "he", "him", "his", "she", "her", "hers", "they", "them", "their",
        "theirs", "we", "us", "our", "you", "your", "i", "me", "my", "is", "are", "was", "were", "be", "been",
        "being", "has", "have", "had", "do", "does", "did", "can", "could", "may", "might", "must", "shall",
        "should", "will", "would", "there", "here", "also", "very", "just", "s", "t",
    }
)  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds; see the module docstring for the measures."""

    min_chars: int = 60  # length band [min_chars, max_chars] when length_from_corpus is off
    min_words: int = 8
    max_chars: int = NEGATIVE_TEXT
    length_from_corpus: bool = False  # band = corpus_chars (the corpus's length quantiles) instead
    length_quantiles: tuple[float, float] = (0.05, 0.95)
    corpus_chars: tuple[int, int] | None = None  # resolved by stage=generate (corpus_length_band)
    shingle: int = 5  # characters per shingle
    near_duplicate: float = 0.8  # Jaccard at or above which two texts are near-duplicates
    excerpt: float = (
        0.9  # containment of the negative in the positive at or above which it is a copied excerpt
    )
    query_copy: float = 0.8  # containment of the negative in the query
    prompt_copy: float = 0.6  # containment of the negative in the prompt's instructions
    loop_ratio: float = 0.5  # share of repeated word trigrams
    min_compression: float = 0.2  # zlib size / raw size below which a text (>= 80 chars) loops
    max_positive_similarity: float | None = 0.95  # cosine under the encoder; None = off
    check_answers: bool = True

    def __post_init__(self) -> None:
        lo, hi = (float(q) for q in self.length_quantiles)
        object.__setattr__(self, "length_quantiles", (lo, hi))
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"length_quantiles must satisfy 0 <= lo < hi <= 1, got {self.length_quantiles}")
        if self.corpus_chars is not None:
            object.__setattr__(self, "corpus_chars", tuple(int(c) for c in self.corpus_chars))
        if self.length_from_corpus and self.corpus_chars is None:
            raise ValueError(
                "length_from_corpus needs corpus_chars: stage=generate sets them from the corpus "
                "(causalneg.stages.generate.filter_config(cfg, dataset))"
            )

    @property
    def length_band(self) -> tuple[int, int]:
        """``(min, max)`` characters of a kept negative."""
        if self.length_from_corpus and self.corpus_chars is not None:
            return self.corpus_chars[0], self.corpus_chars[1]
        return self.min_chars, self.max_chars


def corpus_length_band(lengths: Sequence[int], quantiles: tuple[float, float]) -> tuple[int, int]:
    """The ``quantiles`` of ``lengths`` (linear interpolation), floored / ceiled to whole characters."""
    if not lengths:
        raise ValueError("no passage lengths to take quantiles of")
    ordered = sorted(lengths)

    def quantile(q: float) -> float:
        pos = q * (len(ordered) - 1)
        below = math.floor(pos)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (ordered[above] - ordered[below]) * (pos - below)

    return math.floor(quantile(quantiles[0])), math.ceil(quantile(quantiles[1]))


@dataclass(frozen=True)
class FilterContext:
    """What one query's negatives are compared against."""

    query: str
    positive: str
    candidates: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    instructions: str = ""  # the prompt without query and passages (prompting.instruction_text)


@dataclass(frozen=True)
class Verdict:
    reason: str | None = None  # None = kept
    detail: str = ""

    @property
    def kept(self) -> bool:
        return self.reason is None


def parse_output(raw: RawOutput, schema: type[BaseModel]) -> tuple[BaseModel | None, Verdict]:
    """Validate one raw output against ``schema`` (JSON, then the Pydantic model with its validators)."""
    if raw.error:
        return None, Verdict("backend_error", raw.error)
    try:
        json.loads(raw.text)
    except json.JSONDecodeError as err:
        cut = f" (cut at {raw.output_tokens} tokens)" if raw.finish_reason == "length" else ""
        return None, Verdict("invalid_json", f"{err.msg} at char {err.pos}{cut}")
    try:
        return schema.model_validate_json(raw.text), Verdict()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return None, Verdict("schema_violation", f"{err.error_count()} error(s); {where}: {first['msg']}")


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces."""
    return " ".join(text.lower().translate(_PUNCT).split())


def shingles(text: str, n: int) -> set[str]:
    norm = normalize(text)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def containment(a: set[str], b: set[str]) -> float:
    """Share of ``a``'s shingles found in ``b``."""
    return len(a & b) / len(a) if a else 0.0


def is_looping(text: str, cfg: FilterConfig) -> bool:
    words = normalize(text).split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) >= 8 and 1 - len(set(trigrams)) / len(trigrams) >= cfg.loop_ratio:
        return True
    raw = text.encode("utf-8")
    return len(raw) >= 80 and len(zlib.compress(raw, 9)) / len(raw) < cfg.min_compression


# -- answers ----------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)|\w+")
_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
          "nineteen")  # fmt: skip
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SMALL = {w: i for i, w in enumerate(_UNITS + _TEENS)}
_TENS_VALUE = {w: 10 * (i + 2) for i, w in enumerate(_TENS)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_SENTENCE_BREAK = re.compile(r"[.!?:;\n\"(\[]")


@dataclass(frozen=True)
class _Token:
    norm: str  # canonical form: folded, digits for numbers
    surface: str  # as written (first token of a merged number phrase)
    start: int
    end: int

    @property
    def capitalised(self) -> bool:
        return self.surface[:1].isupper() and self.surface.isalpha() and not self.norm.isdigit()


def _fold(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return folded.replace(",", "") if folded[:1].isdigit() else folded


def _number_at(words: Sequence[str], i: int) -> tuple[int, int] | None:
    """``(value, end)`` of the number phrase in words that starts at ``words[i]`` ("twenty one", "one hundred
    and five", "three thousand"), or None."""
    total = group = small = 0
    last, j, end = "", i, i
    while j < len(words):
        word = words[j]
        if word in _SMALL and last in ("", "tens", "hundred", "scale", "and"):
            if last == "tens" and not 1 <= _SMALL[word] <= 9:
                break
            small, last = small + _SMALL[word], ("teen" if _SMALL[word] >= 10 else "unit")
        elif word in _TENS_VALUE and last in ("", "hundred", "scale", "and"):
            small, last = small + _TENS_VALUE[word], "tens"
        elif word == "hundred" and last in ("unit", "teen") and group == 0:
            group, small, last = small * 100, 0, "hundred"
        elif word in _SCALES and last in ("unit", "teen", "tens", "hundred"):
            total, group, small, last = total + (group + small) * _SCALES[word], 0, 0, "scale"
        elif word == "and" and last in ("hundred", "scale"):
            last = "and"
            j += 1
            continue
        else:
            break
        j += 1
        end = j
    return (total + group + small, end) if end > i else None


def _tokens(text: str) -> list[_Token]:
    """Canonical tokens of ``text`` (articles kept, see :func:`_content`); number phrases merged into digits."""
    raw = [(_fold(m.group(0)), m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    words = [norm for norm, *_ in raw]
    tokens, i = [], 0
    while i < len(raw):
        number = _number_at(words, i)
        if number is not None:
            value, end = number
            tokens.append(_Token(str(value), raw[i][1], raw[i][2], raw[end - 1][3]))
            i = end
        else:
            tokens.append(_Token(*raw[i]))
            i += 1
    return tokens


def _content(tokens: Sequence[_Token]) -> list[int]:
    """Indices of the tokens that are not articles (matching ignores articles, as SQuAD's normalisation)."""
    return [i for i, t in enumerate(tokens) if t.norm not in _ARTICLES]


def normalize_answer(text: str) -> str:
    """The canonical form answers are compared in: folded, no diacritics, no articles, numbers as digits."""
    tokens = _tokens(text)
    return " ".join(tokens[i].norm for i in _content(tokens))


def _spell(n: int) -> str:
    """``n`` (0 <= n < 10**12) in words: 21 -> "twenty one", 1000 -> "one thousand"."""
    if n < 20:
        return (_UNITS + _TEENS)[n]
    if n < 100:
        return _TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + _UNITS[n % 10])
    if n < 1000:
        return _UNITS[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _spell(n % 100))
    for name, scale in sorted(_SCALES.items(), key=lambda kv: -kv[1]):
        if n >= scale:
            rest = n % scale
            return f"{_spell(n // scale)} {name}" + ("" if rest == 0 else " " + _spell(rest))
    raise AssertionError(n)


def answer_aliases(answer: str) -> set[str]:
    """The written forms of ``answer`` that count as the answer, in :func:`normalize_answer`'s form plus with
    numbers in words: ``"21"`` -> ``{"21", "twenty one"}``, ``"Zürich"`` -> ``{"zurich"}``."""
    canonical = normalize_answer(answer)
    if not canonical:
        return set()
    spelled = " ".join(_spell(int(w)) if w.isdigit() and int(w) < 10**12 else w for w in canonical.split())
    return {canonical, spelled}


def _find(sequence: Sequence[str], part: Sequence[str]) -> list[int]:
    n = len(part)
    return [i for i in range(len(sequence) - n + 1) if list(sequence[i : i + n]) == list(part)]


def _is_namesake(text: str, tokens: Sequence[_Token], first: int, last: int, query_words: set[str]) -> bool:
    """Is ``tokens[first..last]`` (a mention of an answer) part of a longer proper name? See the module docs."""
    if not all(t.capitalised for t in tokens[first : last + 1] if t.norm not in _ARTICLES):
        return False

    def between(a: int, b: int) -> str:
        return text[tokens[a].end : tokens[b].start]

    after = last + 1
    if after < len(tokens) and tokens[after].capitalised:
        gap = between(last, after).strip()
        if gap in ("", "-"):
            return True  # "Paris Hilton", "Paris Saint-Germain"
        if gap == ",":  # "Paris, Texas", unless a list goes on or the query names the qualifier
            following = after + 1
            listed = following < len(tokens) and (
                tokens[following].norm in ("and", "or")
                or (between(after, following).strip() == "," and tokens[following].capitalised)
            )
            return not listed and tokens[after].norm not in query_words
    before = first - 1
    if before >= 0 and tokens[before].capitalised and tokens[before].norm not in _ARTICLES:
        opens_sentence = before == 0 or _SENTENCE_BREAK.search(between(before - 1, before)) is not None
        if between(before, first).strip() in ("", "-") and not opens_sentence:
            return True  # "Lake Geneva", "Greater Paris"
    return False


def leaked_answer(text: str, answers: Sequence[str], query: str) -> str | None:
    """The first known answer that ``text`` names (alias-aware, whole tokens; namesakes are not leaks)."""
    tokens = _tokens(text)
    content = _content(tokens)
    body = [tokens[i].norm for i in content]
    asked = normalize_answer(query).split()
    query_words = set(asked)
    for answer in answers:
        wanted = normalize_answer(answer).split()
        if not wanted or wanted in (["yes"], ["no"]) or _find(asked, wanted):
            continue
        for at in _find(body, wanted):
            if not _is_namesake(text, tokens, content[at], content[at + len(wanted) - 1], query_words):
                return answer
    return None


# -- the negative-level checks --------------------------------------------------------------------------------


def copied_candidate(text: str, candidate: str) -> str:
    """Why ``text`` is a near-verbatim copy of ``candidate`` ("" when it rewrites it).

    Aligned word by word (difflib over normalised words), ``text`` copies when its inserted and replaced words
    hold no content word: the candidate itself, an excerpt of it, or it with only function words changed.
    """
    mine, theirs = normalize(text).split(), normalize(candidate).split()
    if mine == theirs:
        return "verbatim copy"
    matcher = difflib.SequenceMatcher(None, theirs, mine, autojunk=False)
    added = [
        w for tag, _, _, j1, j2 in matcher.get_opcodes() if tag in ("replace", "insert") for w in mine[j1:j2]
    ]
    if any(w not in FUNCTION_WORDS for w in added):
        return ""
    return "excerpt, no content word changed" if len(mine) < len(theirs) else "no content word changed"


def check_negative(text: str, ctx: FilterContext, cfg: FilterConfig, kept: Sequence[str] = ()) -> Verdict:
    """Keep or reject one negative text (all checks but the encoder similarity)."""
    stripped = text.strip()
    if not stripped:
        return Verdict("empty")
    lo, hi = cfg.length_band
    words = len(stripped.split())
    if len(stripped) < lo or words < cfg.min_words:
        return Verdict("too_short", f"{len(stripped)} chars, {words} words (band {lo}-{hi} chars)")
    if len(text) >= NEGATIVE_TEXT:
        return Verdict("too_long", f"{len(text)} chars: cut by the schema bound {NEGATIVE_TEXT}")
    if len(stripped) > hi:
        return Verdict("too_long", f"{len(stripped)} chars (band {lo}-{hi})")
    match = _META.search(stripped.translate(_QUOTES))
    if match:
        return Verdict("meta_talk", repr(match.group(0).strip()))
    if is_looping(stripped, cfg):
        return Verdict("looping")
    mine = shingles(stripped, cfg.shingle)
    copied = _copies(mine, ctx.positive, cfg)
    if copied:
        return Verdict("copies_positive", copied)
    for i, candidate in enumerate(ctx.candidates, start=1):
        copied = copied_candidate(stripped, candidate)
        if copied:
            return Verdict("copies_candidate", f"C{i}: {copied}")
    query_share = containment(mine, shingles(ctx.query, cfg.shingle))
    if query_share >= cfg.query_copy:
        return Verdict("copies_query", f"containment {query_share:.2f}")
    prompt_share = containment(mine, shingles(ctx.instructions, cfg.shingle)) if ctx.instructions else 0.0
    if prompt_share >= cfg.prompt_copy:
        return Verdict("copies_prompt", f"containment {prompt_share:.2f}")
    if cfg.check_answers:
        answer = leaked_answer(stripped, ctx.answers, ctx.query)
        if answer is not None:
            return Verdict("answer_leak", repr(answer))
    for other in kept:
        if (
            normalize(other) == normalize(stripped)
            or jaccard(mine, shingles(other, cfg.shingle)) >= cfg.near_duplicate
        ):
            return Verdict("duplicate")
    return Verdict()


def _copies(mine: set[str], passage: str, cfg: FilterConfig) -> str:
    theirs = shingles(passage, cfg.shingle)
    j, c = jaccard(mine, theirs), containment(mine, theirs)
    if j >= cfg.near_duplicate or c >= cfg.excerpt:
        return f"jaccard {j:.2f}, containment {c:.2f}"
    return ""


Embedder = Callable[[list[str]], torch.Tensor]  # texts -> (n, d) L2-normalised embeddings


def positive_similarity(texts: Sequence[str], positive: str, embed: Embedder) -> list[float]:
    """Cosine between the positive and each text: ``embed([positive, *texts])`` rows are unit vectors."""
    if not texts:
        return []
    vectors = embed([positive, *texts]).float()
    vectors = torch.nn.functional.normalize(vectors, dim=-1)  # idempotent for unit vectors; guards others
    return (vectors[1:] @ vectors[0]).tolist()
