"""What each stage costs per million passages and per thousand queries: measured here, and computed for GPUs.

    python experiments/bench_scale_costs.py [--passages 1000] [--threads 2] [--queries 50] [--smoke]
        [--tokenizer DIR]   # an LLM tokenizer folder (e.g. the prepared Qwen2.5-Coder HF folder) for prompt tokens

Measured on this machine (HotpotQA, ../shared/data/hotpotqa_distractor_subset):

- encoding throughput of all-MiniLM-L6-v2 (``model=minilm``: doc max length 256, batch 128, fp32, bucketed)
  over a seeded sample of ``--passages`` paragraphs, with the load average beside it (the machine is shared);
- tokens per passage (the encoder's tokenizer) and prompt tokens per query for the official ``decompose`` and
  ``naive`` prompts (the LLM's tokenizer when ``--tokenizer`` is given, else characters / 4).

Computed (printed with the formula): GPU encoding rate = ``MFU x peak bf16 FLOP/s / FLOPs per passage``, FLOPs
per passage = ``2 P L + 4 n_layers L^2 d`` (``P`` non-embedding parameters, ``L`` tokens per passage, ``d``
hidden size), at an assumed MFU of 0.3 (small encoders rarely reach more); peaks are the vendors' dense bf16
figures. Treat the GPU rows as planning estimates until ``stage=evaluate`` prints the real per-rank rate.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from causalneg.data.sources.beir import load_beir
from causalneg.evaluation.encoding import encode_texts_with_stats
from causalneg.generation.prompting import PromptInputs, clip, render_messages
from causalneg.models.encoder import DualEncoder

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAUSALNEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
GPUS = {"L4": 121e12, "A10G": 70e12, "A100": 312e12, "H100 SXM": 989e12}  # dense bf16 FLOP/s
MFU = 0.3
ENCODERS = {  # name: (non-embedding parameters, layers, hidden size)
    "all-MiniLM-L6-v2 (384-d)": (6 * 12 * 384**2, 6, 384),
    "all-mpnet-base-v2 (768-d)": (12 * 12 * 768**2, 12, 768),
    "Qwen3-Embedding-0.6B (1024-d)": (440e6, 28, 1024),
}


def flops_per_passage(params: float, layers: int, dim: int, tokens: float) -> float:
    """``2 P L + 4 n_layers L^2 d``: the dense matmuls plus attention scores and their weighted sum."""
    return 2 * params * tokens + 4 * layers * tokens**2 * dim


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--smoke", action="store_true", help="CI: 16 passages, 4 queries, 1 thread")
    args = parser.parse_args()
    if args.smoke:
        args.passages, args.queries, args.threads = 16, 4, 1
    if not (SHARED / "hotpotqa_distractor_subset").is_dir():
        raise SystemExit(f"shared data sets not found at {SHARED} (set CAUSALNEG_SHARED_DATA)")
    torch.set_num_threads(args.threads)
    dataset = load_beir(SHARED / "hotpotqa_distractor_subset", name="hotpotqa")
    model_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "minilm.yaml"))
    encoder = DualEncoder.from_config(model_cfg)
    ids = random.Random(0).sample(sorted(dataset.corpus), min(args.passages, len(dataset.corpus)))
    texts = [dataset.corpus[pid].full_text for pid in ids]
    encode_texts_with_stats(encoder, texts[:64], "doc", 128, progress=False)  # warm-up
    load_before = os.getloadavg()[0]
    _, stats = encode_texts_with_stats(encoder, texts, "doc", 128, "32-true", progress=False)
    load_after = os.getloadavg()[0]
    tokens = stats.tokens / stats.n_texts
    print(f"measured: MiniLM fp32, {args.threads} threads, {stats.n_texts} HotpotQA passages: "
          f"{stats.texts_per_second:.1f} passages/s ({stats.seconds:.1f} s; load average {load_before:.1f} -> "
          f"{load_after:.1f}); {tokens:.1f} tokens per passage")  # fmt: skip
    print(f"  => {1e6 / stats.texts_per_second / 3600:.1f} CPU-hours per million passages on this machine")

    print(
        f"\ncomputed: GPU encoding at MFU {MFU}, {tokens:.0f} tokens per passage (passages/s; GPU-s per 1M)"
    )
    for name, (params, layers, dim) in ENCODERS.items():
        flops = flops_per_passage(params, layers, dim, tokens)
        cells = ", ".join(
            f"{gpu} {MFU * peak / flops:,.0f}/s ({1e6 * flops / (MFU * peak):,.0f} s)"
            for gpu, peak in GPUS.items()
        )
        print(f"  {name}: {flops / 1e9:.2f} GFLOP/passage; {cells}")

    split = dataset.split("train")
    qids = random.Random(0).sample(sorted(split.qrels), args.queries)
    count = _token_counter(args.tokenizer)
    totals = {"decompose": 0, "naive": 0}
    for qid in qids:
        pid = next(iter(split.positives(qid)))
        item = PromptInputs(
            qid, split.queries[qid].text, pid, clip(dataset.corpus[pid].full_text, 1200), profile="hotpotqa"
        )
        for kind in totals:
            totals[kind] += sum(count(m["content"]) for m in render_messages(kind, item, 3))
    unit = "tokens" if args.tokenizer else "tokens (chars / 4)"
    print(f"\nmeasured: prompt {unit} per query over {len(qids)} HotpotQA training queries: "
          + ", ".join(f"{k} {v / len(qids):.0f}" for k, v in totals.items()))  # fmt: skip


def _token_counter(tokenizer_dir: str | None):
    if not tokenizer_dir:
        return lambda text: len(text) / 4
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s)")
