"""Recall of the approximate faiss indexes (IVF, HNSW) against exact flat search, and index memory.

    python experiments/bench_index_recall.py [--dataset hotpotqa_distractor_subset] [--k 10,100]
        [--cache-dir .cache] [--threads 2] [--smoke]

On a shared set (default: ../shared/data/hotpotqa_distractor_subset, 18,619 paragraphs, 500 test questions),
with all-MiniLM-L6-v2 (384-d; the corpus embeddings come from the embedding cache when ``stage=evaluate``
already ran with the same ``--cache-dir``): the exact top-k (:func:`exact_topk`) is the reference; for each
index setting it prints

- ``overlap@k``: the mean share of the exact top-k that the index returns in its top-k (recall against flat);
- ``ndcg@10`` / ``recall@100`` against the qrels, beside flat's (what the approximation costs in the metric);
- build and search seconds, and the index's size (``faiss.serialize_index``) against the formula used for the
  scale table in SCALE.md (:func:`index_bytes`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from omegaconf import OmegaConf

from causalneg.data.sources.beir import load_beir
from causalneg.data.sources.subsample import subsample_dataset
from causalneg.evaluation.embedding_cache import EmbeddingCache
from causalneg.evaluation.encoding import encode_texts
from causalneg.evaluation.index import IndexConfig, build_faiss_index
from causalneg.evaluation.metrics import evaluate_run
from causalneg.evaluation.retrieval import encode_corpus, run_from_topk
from causalneg.evaluation.search import exact_topk
from causalneg.models.encoder import DualEncoder

SHARED = Path(
    os.environ.get("CAUSALNEG_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
CONF = Path(__file__).resolve().parents[1] / "conf"


def index_bytes(kind: str, n: int, dim: int, nlist: int = 4096, hnsw_m: int = 32) -> int:
    """Memory of a float32 index over ``n`` vectors of ``dim``: flat ``4nd``; IVF-Flat ``4nd + 8n + 4 nlist d``
    (vectors, 64-bit ids, centroids); HNSW-Flat ``4nd + 4 * 2M n * 1.05`` (level-0 has 2M int32 links per
    vector; the upper levels add about 1/M of that, rounded up to 5 %)."""
    vectors = 4 * n * dim
    if kind in ("flat", "faiss_flat"):
        return vectors
    if kind == "ivf":
        return vectors + 8 * n + 4 * nlist * dim
    if kind == "hnsw":
        return vectors + int(4 * 2 * hnsw_m * n * 1.05)
    raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="hotpotqa_distractor_subset")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: 20 test queries, their passages and 200 others; a temporary cache; 1 thread",
    )
    args = parser.parse_args()
    if not (SHARED / args.dataset).is_dir():
        raise SystemExit(f"shared data set not found at {SHARED / args.dataset} (set CAUSALNEG_SHARED_DATA)")
    smoke_dir = tempfile.TemporaryDirectory(prefix="index-recall-smoke-") if args.smoke else None
    if smoke_dir is not None:
        args.threads, args.cache_dir = 1, smoke_dir.name
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    train = None if args.smoke else "train"  # the smoke run keeps only test queries' passages (and others)
    dataset = load_beir(SHARED / args.dataset, name=args.dataset.split("_")[0], train_split=train)
    if args.smoke:
        dataset = subsample_dataset(dataset, {"test": 20}, random_passages=200, seed=0)
    model_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "minilm.yaml"))  # as model=minilm
    encoder = DualEncoder.from_config(model_cfg, cache_dir=args.cache_dir)
    cache = EmbeddingCache(Path(args.cache_dir) / "embeddings")
    doc_ids, docs = encode_corpus(encoder, dataset, cache=cache)
    split = dataset.split("test")
    query_ids = sorted(split.qrels)
    queries = encode_texts(encoder, [split.queries[q].text for q in query_ids], "query", progress=False)
    n, dim = docs.shape
    print(f"{args.dataset}: {n} passages x {dim}, {len(query_ids)} queries")
    flat_scores, flat_rows = exact_topk(queries, docs, 100)
    flat_metrics, _ = evaluate_run(
        split.qrels, run_from_topk(query_ids, doc_ids, flat_scores, flat_rows, 100)
    )
    nlist = int(np.sqrt(n))  # the usual starting point: about sqrt(N) cells
    settings = [IndexConfig(kind="ivf", nlist=nlist, nprobe=p, gpu="false") for p in (1, 4, 16, 64)] + [
        IndexConfig(kind="hnsw", hnsw_m=32, ef_search=e, gpu="false") for e in (16, 64, 128, 256)
    ]
    header = (
        "index                 overlap@10 overlap@100  ndcg@10 recall@100  build_s search_s  MB (formula MB)"
    )
    print(header)
    print(
        f"{'flat (exact)':<21} {1.0:>10.4f} {1.0:>11.4f} {flat_metrics['ndcg@10']:>8.4f} "
        f"{flat_metrics['recall@100']:>10.4f}        -        -  {index_bytes('flat', n, dim) / 2**20:.1f}"
    )
    docs_np = np.ascontiguousarray(docs.numpy())
    for config in settings:
        began = time.perf_counter()
        index = build_faiss_index(docs_np, config)
        built = time.perf_counter() - began
        began = time.perf_counter()
        scores, rows = index.search(np.ascontiguousarray(queries.numpy()), 100)
        searched = time.perf_counter() - began
        rows_t = torch.from_numpy(rows.astype(np.int64))
        overlap = {
            k: np.mean([len(set(rows[i, :k]) & set(flat_rows[i, :k].tolist())) / k for i in range(len(rows))])
            for k in (10, 100)
        }
        metrics, _ = evaluate_run(
            split.qrels, run_from_topk(query_ids, doc_ids, torch.from_numpy(scores), rows_t, 100)
        )
        size = faiss.serialize_index(index).nbytes
        label = (
            f"ivf nlist={min(nlist, n // 39)} nprobe={config.nprobe}"
            if config.kind == "ivf"
            else (f"hnsw M={config.hnsw_m} ef={config.ef_search}")
        )
        formula = index_bytes(config.kind, n, dim, min(nlist, n // 39), config.hnsw_m)
        print(
            f"{label:<21} {overlap[10]:>10.4f} {overlap[100]:>11.4f} {metrics['ndcg@10']:>8.4f} "
            f"{metrics['recall@100']:>10.4f} {built:>8.2f} {searched:>8.3f}  {size / 2**20:.1f} "
            f"({formula / 2**20:.1f})"
        )
    print("\nformula at MS MARCO scale (8.8M passages), GiB:")
    for dim_ in (384, 768):
        cells = ", ".join(
            f"{kind} {index_bytes(kind, 8_841_823, dim_, 65536, 32) / 2**30:.1f}"
            for kind in ("flat", "ivf", "hnsw")
        )
        print(f"  d={dim_}: {cells}")
    if smoke_dir is not None:
        smoke_dir.cleanup()


if __name__ == "__main__":
    main()
