"""Grounded counterfactual edits on real data: yield, verification, origin probe, and samples to read.

    python experiments/grounded_check.py                       # generate (resumable) + report, both data sets
    python experiments/grounded_check.py --skip-generate       # report from what is already generated
    python experiments/grounded_check.py --limit 64 --naive-limit 16 --datasets hotpotqa scifact
    python experiments/grounded_check.py --smoke --report /tmp/GROUNDED.md   # CI: committed SciFact artifacts

Per data set (``../shared/data``: HotpotQA distractor subset, SciFact), with Qwen2.5-Coder-1.5B on the llamacpp
backend:

1. ``stage=generate generation=grounded`` for ``--limit`` training queries, and ``generation=naive`` for the first
   ``--naive-limit`` of them (same generator, 2 negatives asked per query), each through ``python run.py`` in its
   own process. Both resume: every finished request is in the journal, which this script keeps under
   ``experiments/grounded/journal/`` (committed) and copies back before generating, so a fresh machine continues
   where the last one stopped.
2. The artifacts are copied to ``experiments/grounded/<dataset>/<method>/`` (rows, rejected, decompositions,
   manifest; small JSONL) so that this report can be rebuilt without regenerating.
3. Report ``experiments/GROUNDED.md``: yield (queries with >= 1 kept negative, kept per such query), wall time per
   query, rejections per reason, an independent re-check of the kept edits (no gold answer alias in attribute /
   constraint / sentence edits, no mention of the replaced entity in entity swaps), the query-blind origin probe
   (stock all-MiniLM-L6-v2 embeddings; kept generated vs BM25-mined negatives of the same queries; logistic
   regression, folds grouped by query; :func:`causalneg.diagnostics.probes.blind_probe_auc`) for the grounded and
   the naive negatives on the same queries and, as the reference, for the unedited positives that the kept
   negatives were edited from (what a probe separates before any edit), and 20 kept negatives per data set
   verbatim beside their positive and edit, with the labels a person gave them in
   ``experiments/grounded/labels.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "experiments" / "grounded"
REPORT = REPO / "experiments" / "GROUNDED.md"
DATASETS = {"hotpotqa": "hotpotqa", "scifact": "scifact"}
GENERATOR = ["generation/backend=llamacpp", "generation/model=qwen_coder_1_5b"]
PROBE_REPEATS = 10  # grouped fold assignments averaged per probe AUC (see OriginProbe)
ARTIFACT_FILES = ("rows.jsonl", "rejected.jsonl", "decompositions.jsonl", "manifest.json")
LABELS = ("real hard negative", "still answers", "nonsense", "wrong answer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--limit", type=int, default=64, help="training queries per data set (grounded)")
    parser.add_argument(
        "--naive-limit", type=int, default=16, help="of those, how many also get naive negatives"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="llama.cpp threads (1 when the CPU is shared: a preempted thread stalls the others at every op)",
    )
    parser.add_argument("--home", default=os.environ.get("CAUSALNEG_HOME", str(REPO)), help="CAUSALNEG_HOME")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--num-mined", type=int, default=7, help="mined negatives per query in the probe")
    parser.add_argument("--report", type=Path, default=REPORT, help="the report to write")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: no generation, SciFact's committed artifacts, 2 mined negatives per query in the probe, "
        "3 samples; give --report (the committed GROUNDED.md is not rewritten)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.skip_generate, args.datasets, args.num_mined, args.samples = True, ["scifact"], 2, 3
        if args.report == REPORT:
            parser.error("--smoke needs --report PATH")
    return args


def overrides(dataset: str, method: str, limit: int) -> list[str]:
    return [
        "stage=generate",
        f"dataset={dataset}",
        f"generation={method}",
        *GENERATOR,
        f"generation.limit={limit}",
        f"data.max_train_queries={limit}",
        *(
            # llama.cpp's own grammar converter refuses the naive schema's long bounded strings ("number of
            # rules ... exceeds sane defaults"): the naive baseline is constrained through outlines instead.
            ["generation.max_retries=1", "generation.num_negatives=2", "generation.backend.grammar=outlines"]
            if method == "naive"
            else ["generation.max_retries=2"]
        ),
        "logger.tracking_uri=null",
        "generation.progress=false",
    ]


def compose(extra: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="run", overrides=[*extra, "hydra.runtime.output_dir=/tmp"])


def journal_of(cfg: Any, dataset: Any) -> Path:
    from causalneg.generation.artifact import journal_path
    from causalneg.stages.specs import generation_spec

    return journal_path(generation_spec(cfg), dataset)


def merge_journal(into: Path, other: Path) -> int:
    """Append to ``into`` every line of ``other`` whose request key ``into`` lacks; returns how many. Two
    machines or two homes that extended the same journal (the study and a check) are merged without loss."""
    if not other.is_file():
        return 0
    into.parent.mkdir(parents=True, exist_ok=True)
    have = {json.loads(line)["key"] for line in read_lines(into)}
    new = [line for line in read_lines(other) if json.loads(line)["key"] not in have]
    with into.open("a", encoding="utf-8") as handle:
        handle.writelines(f"{line}\n" for line in new)
    return len(new)


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sync_journal(live: Path, committed: Path) -> None:
    """Seed the live journal with the committed one's requests (resume on a fresh machine)."""
    merge_journal(live, committed)


def generate(dataset: str, method: str, limit: int, home: str, threads: int = 2) -> None:
    command = [
        sys.executable,
        str(REPO / "run.py"),
        *overrides(dataset, method, limit),
        f"generation.backend.n_threads={threads}",  # a throughput option: not in any cache key
    ]
    env = {**os.environ, "CAUSALNEG_HOME": home}
    print(f"[grounded_check] {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=REPO, env=env, check=True)


def load_dataset_for(dataset: str, home: str) -> tuple[Any, Any]:
    os.environ["CAUSALNEG_HOME"] = home
    from causalneg.stages.common import load_dataset

    cfg = compose(overrides(dataset, "grounded", 1))
    return cfg, load_dataset(cfg)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def copy_artifact(cfg: Any, dataset: Any, target: Path) -> Path | None:
    from causalneg.artifacts import is_complete
    from causalneg.stages.specs import generation_plan

    source = generation_plan(cfg, dataset).directory
    if not is_complete(source):  # nothing generated here: the committed copy, when there is one
        committed = all((target / name).is_file() for name in ("rows.jsonl", "manifest.json"))
        return target if committed else None
    target.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACT_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    return target


def recheck(rows: list[dict[str, Any]], dataset: Any, query_text: dict[str, str]) -> Counter[str]:
    """Independent re-check of kept edits (the must-hold rules), counted per violation."""
    from causalneg.generation.filters import leaked_answer
    from causalneg.generation.grounded.edits import remaining_mentions
    from causalneg.generation.grounded.spans import Span

    problems: Counter[str] = Counter()
    for row in rows:
        answers = dataset.answers.get(row["query_id"], [])
        for negative in row["negatives"]:
            edit, strategy = negative["edit"], negative["strategy_type"]
            if edit["operation"] == "replace" and strategy == "entity_shift":
                span = Span(edit["original"], negative.get("span_kind", "name"), 0)
                if remaining_mentions(negative["text"], span, edit["replacement"]):
                    problems["entity_swap_mentions_replaced_entity"] += 1
            elif answers and leaked_answer(negative["text"], answers, query_text[row["query_id"]]):
                problems[f"{strategy}_contains_answer"] += 1
            problems["checked"] += 1
    return problems


class OriginProbe:
    """Query-blind origin probe: kept generated vs BM25-mined negatives of the same queries (stock MiniLM).

    Built once per data set: BM25 mines ``query_ids`` once (after the configured margin filter; mined here, as the
    mining artifact's own query selection need not contain them), the encoder loads once and every text is
    embedded once, however many probes (grounded, naive, reference) the report asks for. The AUC is the mean
    over ``repeats`` grouped 5-fold assignments (fold seeds 0..repeats-1), with their sd and range: on 30-60
    queries one assignment moves the AUC by +-0.05 (SciFact, 29 queries: 0.61-0.73 over 20 assignments), more
    than the differences the report compares.
    """

    def __init__(self, dataset: Any, cfg: Any, num_mined: int, query_ids: list[str]) -> None:
        from causalneg.data.mining.artifact import bm25_options, filter_config
        from causalneg.data.mining.bm25 import mine_bm25
        from causalneg.data.mining.filters import filter_candidates
        from causalneg.stages.specs import generation_spec, mining_spec

        split = generation_spec(cfg).split
        mining = mining_spec(cfg, split).config
        ranked = mine_bm25(dataset, split, query_ids, options=bm25_options(mining))
        self.mined = {
            r.query_id: [c.id for c in filter_candidates(r, filter_config(mining))[0]][:num_mined]
            for r in ranked
        }
        self.dataset, self.cfg = dataset, cfg
        self._encoder: Any = None
        self._vectors: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), d] document-side embeddings, each text encoded once per probe object."""
        import torch

        from causalneg.stages.common import build_encoder

        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing and self._encoder is None:
            self._encoder = build_encoder(self.cfg).eval()
        with torch.inference_mode():
            for start in range(0, len(missing), 32):
                batch = missing[start : start + 32]
                out = self._encoder.encode(**self._encoder.tokenize(batch, "doc"), side="doc").float().numpy()
                self._vectors.update(zip(batch, out, strict=True))
        return np.stack([self._vectors[t] for t in texts])

    def __call__(
        self, rows: list[dict[str, Any]], query_ids: list[str], repeats: int = PROBE_REPEATS
    ) -> dict[str, Any]:
        from causalneg.diagnostics.probes import blind_probe_auc

        generated = {r["query_id"]: [n["text"] for n in r["negatives"]] for r in rows}
        texts, labels, groups = [], [], []
        for qid in query_ids:
            if not generated.get(qid):
                continue
            examples = [(text, True) for text in generated[qid]]
            examples += [(self.dataset.corpus[pid].full_text, False) for pid in self.mined.get(qid, [])]
            for text, is_generated in examples:
                texts.append(text)
                labels.append(is_generated)
                groups.append(qid)
        counts = {
            "queries": len(set(groups)),
            "generated": int(sum(labels)),
            "mined": int(len(labels) - sum(labels)),
        }
        if len(set(groups)) < 5:
            return {
                "auc": float("nan"),
                "auc_sd": float("nan"),
                "auc_range": "-",
                "auc_seed0": float("nan"),
            } | counts
        embeddings, z = self.embed(texts), np.asarray(labels)
        aucs = np.array([blind_probe_auc(embeddings, z, groups, seed=s) for s in range(repeats)])
        return {
            "auc": round(float(np.nanmean(aucs)), 4),
            "auc_sd": round(float(np.nanstd(aucs)), 4),
            "auc_range": f"{np.nanmin(aucs):.3f}-{np.nanmax(aucs):.3f}",
            "auc_seed0": round(float(aucs[0]), 4),
        } | counts


def seconds_per_query(journal: Path, query_ids: set[str]) -> float | None:
    """Wall time per query from the journal (each record's share of its backend call), grounded stages only."""
    per_query: dict[str, float] = {}
    for record in read_jsonl(journal):
        if record.get("query_id") in query_ids and record.get("stage") in (
            "decompose",
            "substitute",
            "judge",
        ):
            qid = record["query_id"]
            per_query[qid] = per_query.get(qid, 0.0) + float(record.get("seconds", 0.0))
    return round(sum(per_query.values()) / len(per_query), 2) if per_query else None


def load_labels() -> dict[str, dict[str, str]]:
    path = OUT / "labels.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(k): v for k, v in data.items()}


def sample_key(dataset: str, query_id: str, text: str) -> str:
    """A label's key: the negative's text hash, so that a label never moves to another negative after a rerun."""
    return f"{dataset}/{query_id}/{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"


def pick_samples(
    rows: list[dict[str, Any]], n: int, seed: int = 0
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` kept negatives drawn at random (seeded) from all queries, in row order: not only the first queries'."""
    every = [(row, negative) for row in rows for negative in row["negatives"]]
    chosen = sorted(random.Random(seed).sample(range(len(every)), min(n, len(every))))
    return [every[i] for i in chosen]


def samples_section(
    name: str, rows: list[dict[str, Any]], dataset: Any, query_text: dict[str, str], n: int
) -> tuple[list[str], Counter[str]]:
    labels = load_labels()
    lines: list[str] = []
    tally: Counter[str] = Counter()
    for number, (row, negative) in enumerate(pick_samples(rows, n), start=1):
        key = sample_key(name, row["query_id"], negative["text"])
        label = labels.get(key, {})
        tally[label.get("label", "unlabelled")] += 1
        edit = negative["edit"]
        change = (
            f'replace "{edit["original"]}" -> "{edit["replacement"]}" ({edit["mentions"]} mention(s))'
            if edit["operation"] == "replace"
            else f'drop sentence "{edit["original"]}"'
        )
        answers = dataset.answers.get(row["query_id"], [])
        positive_id = negative.get("positive_id", row["positive_id"])
        lines += [
            f"#### {name} sample {number} (`{key}`)",
            f"- **query**: {query_text[row['query_id']]}"
            + (f" — answer: {', '.join(answers)}" if answers else ""),
            f"- **requirement**: {negative['requirement']} "
            f"(evidence `{negative['evidence']}`, {negative['strategy_type']})",
            f"- **edit**: {change}; judge P(yes) {negative.get('judge_p_yes')}; "
            f"cos(q, neg) {negative.get('similarity', {}).get('query_negative')} vs cos(q, pos) "
            f"{negative.get('similarity', {}).get('query_positive')}",
            f"- **positive** (`{positive_id}`): {dataset.corpus[positive_id].full_text}",
            f"- **negative**: {negative['text']}",
            f"- **label**: {label.get('label', 'unlabelled')}"
            + (f" — {label['note']}" if label.get("note") else ""),
            "",
        ]
    return lines, tally


def probe_row(label: str, result: dict[str, Any]) -> str:
    return (
        f"| {label} | {result['queries']} | {result['generated']} | {result['mined']} | "
        f"{result['auc']} ± {result['auc_sd']} | {result['auc_range']} | {result['auc_seed0']} |"
    )


def unedited(rows: list[dict[str, Any]], dataset: Any) -> list[dict[str, Any]]:
    """``rows`` with each generated negative's text replaced by the positive it was edited from: the probe's
    reference. A query-blind probe can tell a data set's judged positives from BM25's candidates without any edit
    (SciFact's positives are the abstracts that claims cite); what the edits add is the AUC above this one."""
    return [
        {
            **row,
            "negatives": [
                {**n, "text": dataset.corpus[n["positive_id"]].full_text} for n in row["negatives"]
            ],
        }
        for row in rows
    ]


def dataset_section(name: str, args: argparse.Namespace) -> list[str]:
    cfg, dataset = load_dataset_for(name, args.home)
    from causalneg.stages.specs import generation_plan

    def generation_query_ids(cfg: Any, data: Any) -> list[str]:
        return list(generation_plan(cfg, data).selection.query_ids)

    grounded_cfg = compose(overrides(name, "grounded", args.limit))
    naive_cfg = compose(overrides(name, "naive", args.naive_limit)) if args.naive_limit else None
    query_ids = generation_query_ids(grounded_cfg, dataset)
    naive_ids = generation_query_ids(naive_cfg, dataset) if naive_cfg is not None else query_ids
    journal = journal_of(grounded_cfg, dataset)
    committed = OUT / "journal" / f"{name}-{journal.name}"
    sync_journal(journal, committed)
    if not args.skip_generate:
        generate(name, "grounded", args.limit, args.home, args.threads)
        merge_journal(committed, journal)
        if args.naive_limit:
            generate(name, "naive", args.naive_limit, args.home, args.threads)
            merge_journal(committed, journal)
    grounded_dir = copy_artifact(grounded_cfg, dataset, OUT / name / "grounded")
    naive_dir = copy_artifact(naive_cfg, dataset, OUT / name / "naive") if naive_cfg is not None else None
    lines = [f"## {name}", ""]
    if grounded_dir is None:
        return [*lines, "No complete grounded artifact yet: run this script without --skip-generate.", ""]
    rows = read_jsonl(grounded_dir / "rows.jsonl")
    manifest = json.loads((grounded_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    split = dataset.split(cfg.dataset.train_split)
    query_text = {qid: split.queries[qid].text for qid in query_ids}
    with_neg = [r for r in rows if r["negatives"]]
    kept = sum(len(r["negatives"]) for r in rows)
    checks = recheck(rows, dataset, query_text)
    by_strategy = Counter(n["strategy_type"] for r in rows for n in r["negatives"])
    lines += [
        f"Scale: {len(rows)} training queries (seeded sample, `generation.limit={args.limit}`), "
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M on llama.cpp, "
        + (
            "no new requests (--skip-generate)."
            if args.skip_generate
            else f"{args.threads} thread(s) for new ones."
        ),
        "",
        "| measure | value |",
        "|---|---|",
        f"| queries with >= 1 kept negative | {len(with_neg)} / {len(rows)} "
        f"({len(with_neg) / max(len(rows), 1):.1%}) |",
        f"| kept negatives | {kept} ({kept / max(len(with_neg), 1):.2f} per query with negatives) |",
        f"| kept by strategy | {dict(sorted(by_strategy.items()))} |",
        f"| LLM requests (decompose / substitute / judge) | {counts.get('per_stage')} |",
        f"| LLM seconds per query (this artifact's requests at their journaled timings, which include requests "
        "made by earlier sessions, some on a shared, loaded CPU) | "
        f"{counts.get('generation_seconds', 0) / max(len(rows), 1):.1f} s |",
        f"| LLM seconds per query (every journaled request of these queries, earlier rule versions included) | "
        f"{seconds_per_query(journal, set(query_ids))} s |",
        f"| output tokens/s | {counts.get('tokens_per_s')} |",
        f"| re-check of kept edits | {dict(sorted(checks.items()))} |",
        "",
        "Rejections per reason (every candidate edit or output that was not kept):",
        "",
        "| reason | count |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in sorted(counts["rejections"].items())],
        "",
    ]
    probe = OriginProbe(dataset, cfg, args.num_mined, list(dict.fromkeys([*query_ids, *naive_ids])))
    grounded_probe = probe(rows, naive_ids)
    grounded_all = probe(rows, query_ids)
    reference = probe(unedited(rows, dataset), query_ids)
    lines += [
        "Query-blind origin probe (stock all-MiniLM-L6-v2, logistic regression, 5 folds grouped by query; "
        f"{args.num_mined} BM25-mined negatives per query; 0.5 = not separable). The AUC is the mean over "
        f"{PROBE_REPEATS} fold assignments (one assignment alone moves it by about its sd; `OriginProbe`):",
        "",
        "| negatives | queries | generated | mined | AUC (mean ± sd) | range | fold seed 0 |",
        "|---|---|---|---|---|---|---|",
        probe_row("grounded, all queries", grounded_all),
        probe_row("grounded, the naive queries", grounded_probe),
        probe_row("reference: the unedited positives of the kept negatives, all queries", reference),
    ]
    if naive_dir is not None:
        naive_rows = read_jsonl(naive_dir / "rows.jsonl")
        naive_probe = probe(naive_rows, naive_ids)
        naive_counts = json.loads((naive_dir / "manifest.json").read_text())["counts"]
        lines.append(probe_row("naive, the same queries", naive_probe))
        lines += [
            "",
            f"Naive baseline on {len(naive_rows)} queries: {naive_counts.get('queries_with_negatives')} with kept "
            f"negatives, {naive_counts.get('negatives_kept')} kept; rejections {naive_counts.get('rejections')}.",
        ]
    samples, tally = samples_section(name, rows, dataset, query_text, args.samples)
    labelled = sum(v for k, v in tally.items() if k != "unlabelled")
    lines += [
        "",
        f"### {name}: {len(samples) and min(args.samples, kept)} kept negatives, read by a person",
        "",
    ]
    if labelled:
        lines += [
            "Labels: "
            + ", ".join(f"{label} {tally[label]} ({tally[label] / labelled:.0%})" for label in LABELS)
            + f" of {labelled} labelled.",
            "",
        ]
    every = labels_of_every_kept(name, rows)
    every_labelled = sum(every.values())
    if every_labelled > labelled:
        lines += [
            f"Every kept negative that a person has read ({every_labelled} of {kept}; the samples above and "
            "earlier readings of the same texts): "
            + ", ".join(f"{label} {every[label]} ({every[label] / every_labelled:.0%})" for label in LABELS)
            + ".",
            "",
        ]
    return [*lines, *samples]


def labels_of_every_kept(name: str, rows: list[dict[str, Any]]) -> Counter[str]:
    """The labels of every kept negative whose text a person has labelled (keys of :func:`sample_key`)."""
    labels = load_labels()
    keys = (
        sample_key(name, row["query_id"], negative["text"]) for row in rows for negative in row["negatives"]
    )
    return Counter(labels[key]["label"] for key in keys if key in labels)


BENCH_COMMAND = (
    "python experiments/bench_generation.py --model qwen_coder_1_5b --n 6 --threads 2 --only-decompose "
    "--backends llamacpp,llamacpp:parallel=6,vllm --override generation.decompose.max_new_tokens=192 "
    "--json experiments/grounded/bench_generation.json"
)


def _rates(run: dict[str, Any]) -> tuple[float, float]:
    seconds = run["seconds"]["decompose"]
    return run["requests"]["decompose"] / seconds, run["tokens"]["decompose"] / seconds


def bench_section() -> list[str]:
    """The committed engine benchmark (:data:`BENCH_COMMAND`): every llamacpp setting against vllm."""
    path = OUT / "bench_generation.json"
    if not path.is_file():
        return []
    runs = json.loads(path.read_text())
    lines = [
        "## Engine speed: llamacpp against vllm, same model, same requests",
        "",
        "The runs in `experiments/grounded/bench_generation.json` (the official decompose requests of 6 HotpotQA "
        f"queries, cut at 192 tokens); a new measurement rewrites it: `{BENCH_COMMAND}`.",
        "",
        "The CPU is shared (2 cores): the 1-minute load average before and after each backend is shown; compare "
        "ratios of backends measured in one run under similar load.",
        "",
        "| backend | start-up s | requests | wall s | req/s | output tokens | tok/s | load before -> after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        seconds, tokens, requests = (run[k]["decompose"] for k in ("seconds", "tokens", "requests"))
        load = run.get("load") or [[float("nan")], [float("nan")]]
        lines.append(
            f"| {run['backend']} | {run['startup_s']:.1f} | {requests} | {seconds:.1f} | {requests / seconds:.3f} | "
            f"{tokens} | {tokens / seconds:.2f} | {load[0][0]:.1f} -> {load[-1][0]:.1f} |"
        )
    reference = next((r for r in runs if r.get("engine", r["backend"]) == "vllm"), None)
    if reference is not None:
        lines.append("")
        for run in runs:
            if run.get("engine", run["backend"]) == "llamacpp":
                (req, tok), (ref_req, ref_tok) = _rates(run), _rates(reference)
                lines.append(
                    f"- {run['backend']} / vllm: {tok / ref_tok:.2f}x output tok/s, {req / ref_req:.2f}x req/s."
                )
    return [*lines, ""]


def same_thing_section() -> list[str]:
    """The committed calibration of the same-thing check (``experiments/calibrate_same_thing.py``)."""
    path = OUT / "same_thing.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    same = sum(1 for p in data["pairs"] if p["same"])
    lines = [
        "## The same-thing check: P(yes) for synonyms against sibling terms",
        "",
        f"`python experiments/calibrate_same_thing.py` ({data['model']}, profile {data['profile']}, "
        f"{data['seconds']:.0f} s): the judge's P(yes) that span and substitute name the same thing. A substitute "
        "at `generation.verify.same_thing_threshold` or above is rejected (`same_thing`).",
        "",
        "| threshold | synonyms rejected | different things rejected |",
        "|---|---|---|",
    ]
    for threshold, counts in data["thresholds"].items():
        lines.append(
            f"| {threshold} | {counts['same_rejected']} of {same} | "
            f"{counts['different_rejected']} of {len(data['pairs']) - same} |"
        )
    lines += ["", "| P(yes) | pair | same thing? |", "|---|---|---|"]
    for pair in sorted(data["pairs"], key=lambda p: -p["p_yes"]):
        lines.append(
            f"| {pair['p_yes']:.3f} | {pair['span']} -> {pair['substitute']} | {'yes' if pair['same'] else 'no'} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("CAUSALNEG_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    if not Path(os.environ["CAUSALNEG_SHARED_DATA"]).is_dir():
        raise SystemExit(f"shared data sets not found at {os.environ['CAUSALNEG_SHARED_DATA']}")
    body = [
        "# Grounded counterfactual edits on real data",
        "",
        "Built by `python experiments/grounded_check.py`.",
        "",
    ]
    for name in args.datasets:
        body += dataset_section(name, args)
    body += same_thing_section()
    body += bench_section()
    args.report.write_text("\n".join(body) + "\n", encoding="utf-8")
    print(f"[grounded_check] wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
