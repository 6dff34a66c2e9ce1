"""Any BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``; optionally
``hard_negatives/<split>.tsv`` (query-id, corpus-id) and an answers file (``query_meta.jsonl`` with ``answer``
or ``answers.jsonl`` with ``answers``, as in ``../shared/data``).

Published BEIR releases can judge documents that their corpus lacks (a handful of qrels in some sets). BEIR's
and MTEB's evaluators keep such qrels: the query counts, its ideal DCG includes the missing document, and it
scores what it can. :data:`MISSING_DOCUMENT_POLICIES` lets a user choose; every other data error stays strict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args

from causalneg.artifacts import file_fingerprint, fingerprint
from causalneg.data.readers import (
    read_answers_jsonl,
    read_corpus_jsonl,
    read_pairs_tsv,
    read_qrels_tsv,
    read_queries_jsonl,
)
from causalneg.data.sources import build_split, carve_dev, limit_corpus, requested_splits
from causalneg.errors import ConfigError, DataError
from causalneg.records import Passage, Query, RetrievalDataset, RetrievalSplit

log = logging.getLogger(__name__)

MissingDocuments = Literal["warn-and-keep", "warn-and-drop", "error"]
# What a qrel whose corpus-id is not in corpus.jsonl does:
#   warn-and-keep: stays in the qrels (BEIR/MTEB: counted in the ideal DCG and recall, never retrieved);
#   warn-and-drop: is removed (a query left without any judgment leaves the split);
#   error: stops loading with a DataError naming file, line and field 'corpus-id'.
MISSING_DOCUMENT_POLICIES: tuple[str, ...] = get_args(MissingDocuments)


def _apply_missing_documents(
    qrels: dict[str, dict[str, int]], corpus: dict[str, Passage], policy: str, path: Path
) -> dict[str, dict[str, int]]:
    """``qrels`` under ``policy`` for judged ids missing from ``corpus`` (logs how many qrels, which queries)."""
    missing = [(qid, pid) for qid, rels in qrels.items() for pid in rels if pid not in corpus]
    if not missing:
        return qrels
    queries = len({qid for qid, _ in missing})
    action = "kept (never retrieved, as in BEIR/MTEB)" if policy == "warn-and-keep" else "dropped"
    log.warning(
        "%s: %d qrels of %d queries point to documents missing from the corpus, e.g. %s; %s "
        "(dataset.missing_documents=%s)",
        path,
        len(missing),
        queries,
        missing[:3],
        action,
        policy,
    )
    if policy == "warn-and-keep":
        return qrels
    dropped = set(missing)
    kept = {
        qid: {pid: s for pid, s in rels.items() if (qid, pid) not in dropped} for qid, rels in qrels.items()
    }
    return {qid: rels for qid, rels in kept.items() if rels}


def _read_split(
    root: Path,
    split: str,
    queries: dict[str, Query],
    corpus: dict[str, Passage],
    files: list[Path],
    missing_documents: str,
) -> tuple[RetrievalSplit, int]:
    """The split and how many of its qrels point to documents missing from the corpus."""
    path = root / "qrels" / f"{split}.tsv"
    if not path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise DataError(
            f"file not found: expected the qrels of split '{split}' here (available: {have})", path=path
        )
    files.append(path)
    strict = missing_documents == "error"
    qrels = read_qrels_tsv(path, known_queries=queries, known_docs=corpus if strict else None)
    affected = sum(pid not in corpus for rels in qrels.values() for pid in rels)
    qrels = _apply_missing_documents(qrels, corpus, missing_documents, path)
    if not qrels:
        raise DataError(
            "no judgments left: every qrel points to a document missing from the corpus", path=path
        )
    split_data = build_split(queries, qrels)
    if not any(split_data.positives(qid) for qid in split_data.queries):
        raise DataError(f"split '{split}' has no positive judgment (every score is <= 0)", path=path)
    return split_data, affected


def _read_hard_negatives(
    root: Path, split: str, split_data: RetrievalSplit, corpus: dict[str, Passage], files: list[Path]
) -> dict[str, list[str]] | None:
    path = root / "hard_negatives" / f"{split}.tsv"
    if not path.is_file():
        return None
    files.append(path)
    return read_pairs_tsv(path, known_queries=split_data.queries, known_docs=corpus)


def _relative(path: Path, root: Path) -> str:
    """A file's name relative to the dataset folder, so the fingerprint does not depend on where it lives."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def load_beir(
    path: str | Path,
    name: str | None = None,
    train_split: str | None = "train",
    dev_split: str | None = None,
    test_split: str | None = "test",
    dev_from_train: int = 0,
    seed: int = 0,
    query_meta: str | None = None,
    max_corpus: int | None = None,
    missing_documents: MissingDocuments = "warn-and-keep",
) -> RetrievalDataset:
    """Load a BEIR folder into a :class:`RetrievalDataset`.

    Args:
        path: the folder. ``name`` defaults to its basename.
        train_split / dev_split / test_split: qrels file stems to load (``None`` = not loaded). Each split
            holds the queries judged in its qrels file; a requested split that is missing or has no positive
            fails.
        dev_from_train: if > 0, carve a seeded dev split of that many queries out of train, named
            ``dev_split`` (which must be set and must not exist as a file; see
            :func:`causalneg.data.sources.carve_dev`).
        seed: seed of that carve.
        query_meta: answers file relative to ``path`` (``query_meta.jsonl`` / ``answers.jsonl``) ->
            ``dataset.answers[qid]``; ``None`` = no answers.
        max_corpus: keep at most this many passages (all judged and hard-negative passages are kept, then
            the rest in file order): for quick runs.
        missing_documents: what a qrel does whose document is not in ``corpus.jsonl``: ``warn-and-keep``
            (default; BEIR and MTEB keep such qrels, so their numbers are reproduced), ``warn-and-drop``
            or ``error`` (see :data:`MissingDocuments`). The warning names the file and how many qrels
            and queries are affected. Hard-negative files stay strict.

    ``dataset.fingerprint`` hashes the bytes of every file read and these options; ``missing_documents``
    joins them only when some qrel points to a missing document (otherwise every policy loads the same
    data, and fingerprints of existing artifacts stay valid).
    """
    if missing_documents not in MISSING_DOCUMENT_POLICIES:
        raise ConfigError(
            f"dataset.missing_documents must be one of {list(MISSING_DOCUMENT_POLICIES)}, "
            f"got {missing_documents!r}"
        )
    root = Path(path)
    if not root.is_dir():
        raise DataError("dataset folder not found (expected corpus.jsonl, queries.jsonl, qrels/)", path=root)
    file_splits = requested_splits(train_split, dev_split, test_split, dev_from_train)
    files = [root / "corpus.jsonl", root / "queries.jsonl"]
    corpus = read_corpus_jsonl(files[0])
    queries = read_queries_jsonl(files[1])

    splits: dict[str, RetrievalSplit] = {}
    hard_negatives: dict[str, dict[str, list[str]]] = {}
    affected = 0
    for split in file_splits:
        splits[split], missing = _read_split(root, split, queries, corpus, files, missing_documents)
        affected += missing
        negatives = _read_hard_negatives(root, split, splits[split], corpus, files)
        if negatives is not None:
            hard_negatives[split] = negatives

    if dev_from_train and train_split is not None and dev_split is not None:
        if (root / "qrels" / f"{dev_split}.tsv").is_file():
            raise ConfigError(
                f"dev_from_train={dev_from_train} but {root / 'qrels' / f'{dev_split}.tsv'} exists: set "
                "dev_from_train=0 to use that file, or name the carved split differently (dev_split)"
            )
        splits[train_split], splits[dev_split] = carve_dev(splits[train_split], dev_from_train, seed)
        train_negatives = hard_negatives.get(train_split, {})
        moved = {q: train_negatives.pop(q) for q in list(train_negatives) if q in splits[dev_split].queries}
        if moved:
            hard_negatives[dev_split] = moved

    answers: dict[str, list[str]] = {}
    if query_meta is not None:
        files.append(root / query_meta)
        answers = read_answers_jsonl(root / query_meta, known_queries=queries)

    required = {pid for s in splits.values() for judged in s.qrels.values() for pid in judged}
    required |= {pid for per_split in hard_negatives.values() for pids in per_split.values() for pid in pids}
    corpus = limit_corpus(corpus, max_corpus, required & corpus.keys())

    options = {
        "loader": "beir",
        "splits": {"train": train_split, "dev": dev_split, "test": test_split},
        "dev_from_train": dev_from_train,
        "seed": seed,
        "query_meta": query_meta,
        "max_corpus": max_corpus,
    }
    if affected:
        options["missing_documents"] = missing_documents
    dataset = RetrievalDataset(
        name=name or root.resolve().name,
        corpus=corpus,
        splits=splits,
        hard_negatives=hard_negatives,
        answers=answers,
    )
    dataset.fingerprint = fingerprint(
        {"files": {_relative(p, root): file_fingerprint(p) for p in files}, "options": options}
    )
    log.info(
        "loaded %s: %d passages, splits %s",
        dataset.name,
        len(corpus),
        {k: len(v.queries) for k, v in splits.items()},
    )
    return dataset
