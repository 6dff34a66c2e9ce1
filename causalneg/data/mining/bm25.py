"""BM25 retrieval and mining with ``bm25s`` (pure-numpy scoring, no numba needed).

Tokenisation (the rules of ``bm25s.tokenize``, see :class:`Tokenizer`): lower-case, scikit-learn's token
pattern ``\\b\\w\\w+\\b`` (words of two or more characters), English stop words removed
(``stopwords="en"``) and the Snowball English stemmer from PyStemmer (``stemmer="english"``; ``None`` turns
stemming off). Passages are indexed as ``title. text`` (:attr:`Passage.full_text`). Scoring is Lucene's BM25
with ``k1=0.9, b=0.4`` (Anserini's and BEIR's BM25 defaults):

    score(q, d) = sum_{t in q} idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

Each query's full score vector is computed, so positives get a score even when they fall outside the top k,
and the ranking is deterministic (score descending, then corpus order). Passages with score 0 (no query term)
are not retrieved.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_EN_PLUS, STOPWORDS_FRENCH, STOPWORDS_GERMAN

from causalneg.data.mining.filters import RankedCandidates
from causalneg.errors import MissingDependencyError
from causalneg.records import RetrievalDataset


@dataclass(frozen=True)
class BM25Options:
    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"


_STOPWORDS = {
    "en": STOPWORDS_EN,
    "english": STOPWORDS_EN,
    "en_plus": STOPWORDS_EN_PLUS,
    "fr": STOPWORDS_FRENCH,
    "french": STOPWORDS_FRENCH,
    "de": STOPWORDS_GERMAN,
    "german": STOPWORDS_GERMAN,
}
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's CountVectorizer pattern, as bm25s.tokenize


def _stemmer(name: str | None) -> Callable[[list[str]], list[str]] | None:
    if name is None:
        return None
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        raise MissingDependencyError("PyStemmer", hint="or set the BM25 option stemmer to null") from None
    stem: Callable[[list[str]], list[str]] = Stemmer.Stemmer(name).stemWords
    return stem


class Tokenizer:
    """bm25s.tokenize's rules (lower-case, ``\\b\\w\\w+\\b``, stop words, stemmer), with the stop-word set
    built once and each distinct word stemmed once (bm25s rebuilds the set for every text)."""

    def __init__(self, options: BM25Options) -> None:
        if options.stopwords is not None and options.stopwords not in _STOPWORDS:
            raise ValueError(
                f"unknown stopwords {options.stopwords!r}; expected one of {sorted(_STOPWORDS)} or None"
            )
        self.stopwords = frozenset(_STOPWORDS[options.stopwords]) if options.stopwords else frozenset()
        self.stem = _stemmer(options.stemmer)
        self._stems: dict[str, str] = {}

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        words = [[w for w in _TOKEN.findall(text.lower()) if w not in self.stopwords] for text in texts]
        if self.stem is None:
            return words
        new = sorted({w for ws in words for w in ws if w not in self._stems})
        self._stems.update(zip(new, self.stem(new), strict=True))
        return [[self._stems[w] for w in ws] for ws in words]


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first, ties broken by lower index (deterministic)."""
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    # lexsort sorts by the last key first: score descending, then index ascending.
    return part[np.lexsort((part, -scores[part]))]


class BM25Index:
    """A BM25 index over ``texts`` whose rows are named by ``ids``."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str], options: BM25Options | None = None) -> None:
        if len(ids) != len(texts) or not ids:
            raise ValueError(f"need as many ids as texts, and at least one (got {len(ids)} and {len(texts)})")
        self.options = options or BM25Options()
        self.ids = list(ids)
        self.position = {pid: i for i, pid in enumerate(self.ids)}
        self.tokenize = Tokenizer(self.options)
        vocab: defaultdict[str, int] = defaultdict(itertools.count().__next__)  # word -> next free id
        doc_ids = [[vocab[w] for w in ws] for ws in self.tokenize(texts)]
        self.vocab = dict(vocab)
        self._bm25 = bm25s.BM25(k1=self.options.k1, b=self.options.b, method=self.options.method)
        self._bm25.index((doc_ids, self.vocab), show_progress=False)

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        """BM25 score of every indexed text for one tokenised query: float32 ``[N]`` (unknown words: 0)."""
        token_ids = [self.vocab[w] for w in query_tokens if w in self.vocab]
        if not token_ids:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(token_ids), dtype=np.float32)

    def search(self, query_texts: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query ``(indices, scores)`` of the top ``k`` texts with a positive score, best first."""
        results = []
        for tokens in self.tokenize(query_texts):
            scores = self.scores(tokens)
            top = top_k_indices(scores, k)
            top = top[scores[top] > 0]
            results.append((top, scores[top]))
        return results

    @classmethod
    def from_dataset(cls, dataset: RetrievalDataset, options: BM25Options | None = None) -> BM25Index:
        """The index of ``dataset.corpus``; the last one built is reused while the same dataset object (same
        fingerprint and corpus size) asks again with the same options, e.g. when mining train then dev."""
        options = options or BM25Options()
        key = (dataset.fingerprint, len(dataset.corpus), options)
        cached = _LAST_INDEX.get("entry")
        if cached is not None and cached[0]() is dataset and cached[1] == key:
            return cached[2]
        index = cls(list(dataset.corpus), [p.full_text for p in dataset.corpus.values()], options)
        _LAST_INDEX["entry"] = (
            weakref.ref(dataset, lambda _: _LAST_INDEX.clear()),
            key,
            index,
        )  # freed with it
        return index


# One cached index (weakly tied to its dataset), so that mining several splits indexes the corpus once.
_LAST_INDEX: dict[str, tuple[weakref.ref[RetrievalDataset], tuple[str, int, BM25Options], BM25Index]] = {}


def bm25_run(
    dataset: RetrievalDataset, split: str, k: int = 100, options: BM25Options | None = None
) -> dict[str, dict[str, float]]:
    """A TREC-style run ``{qid: {pid: score}}`` of the top ``k`` passages for every query of ``split``."""
    index = BM25Index.from_dataset(dataset, options)
    queries = list(dataset.split(split).queries.values())
    hits = index.search([q.text for q in queries], k)
    return {
        q.id: {index.ids[i]: float(s) for i, s in zip(idx, sc, strict=True)}
        for q, (idx, sc) in zip(queries, hits, strict=True)
    }


def mine_bm25(
    dataset: RetrievalDataset,
    split: str,
    query_ids: Sequence[str],
    top_k: int = 100,
    options: BM25Options | None = None,
) -> list[RankedCandidates]:
    """BM25 candidates for ``query_ids`` of ``split``: the top ``top_k + #positives`` passages (so ``top_k``
    non-positive candidates remain once the filters drop the positives), plus every positive's BM25 score."""
    data = dataset.split(split)
    index = BM25Index.from_dataset(dataset, options)
    positives = [tuple(data.positives(qid)) for qid in query_ids]
    results: list[RankedCandidates] = []
    for qid, pos, tokens in zip(
        query_ids, positives, index.tokenize([data.queries[q].text for q in query_ids]), strict=True
    ):
        scores = index.scores(tokens)
        top = top_k_indices(scores, top_k + len(pos))
        top = top[scores[top] > 0]
        candidates = tuple((index.ids[i], float(scores[i])) for i in top)
        pos_scores = {p: float(scores[index.position[p]]) for p in pos if p in index.position}
        results.append(RankedCandidates(qid, pos, candidates, pos_scores))
    return results
