"""The corpus's own words, for the checks that compare an edit with what the corpus says (:mod:`.verify`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_TOKEN = re.compile(r"[0-9A-Za-zÀ-ÖØ-öø-ÿ]+")


class CorpusVocabulary:
    """The corpus's own words: ``self(token)`` is a token's document frequency (the share of corpus documents
    whose lower-cased word tokens include it), :meth:`names` whether some document writes a whole phrase.

    ``names`` searches one lower-cased copy of the corpus (HotpotQA subset: 11 MB, tens of milliseconds a
    phrase); it is asked once per proposed substitute.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        lowered = []
        for text in texts:
            counts.update({t.lower() for t in _TOKEN.findall(text)})
            lowered.append(" ".join(text.lower().split()))
        self._counts = counts
        self._total = max(len(lowered), 1)
        self._text = "\n".join(lowered)

    def __call__(self, token: str) -> float:
        return self._counts.get(token.lower(), 0) / self._total

    def names(self, phrase: str) -> bool:
        """Whether some document has ``phrase`` (case- and whitespace-insensitive, on word boundaries)."""
        words = phrase.lower().split()
        if not words:
            return False
        if any(self._counts.get(t, 0) == 0 for t in _TOKEN.findall(" ".join(words))):
            return False  # a word no document has: no need to search
        pattern = r"(?<![\w])" + r"\s".join(re.escape(w) for w in words) + r"(?![\w])"
        return re.search(pattern, self._text) is not None
