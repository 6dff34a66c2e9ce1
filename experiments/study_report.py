"""Rebuild the study section of ``experiments/RESULTS.md`` from the committed results only (no MLflow, no training).

    python experiments/study_report.py                      # both data sets, 4 arms x 3 seeds
    python experiments/study_report.py --print              # print the section instead of writing RESULTS.md
    python experiments/study_report.py --smoke --study DIR --out /tmp/RESULTS.md   # CI, on a tiny study

Reads ``experiments/study/`` (:mod:`study_results`: one JSON per run, the committed generation manifests,
``nq_stock.json``) and writes, per data set: each arm's nDCG@10 / Recall@100 / MRR@10 (mean ± sd over seeds,
95% bootstrap interval over queries), each arm against ``mined_only`` (paired bootstrap interval over queries,
Wilcoxon signed-rank; :mod:`causalneg.tracking.compare`), the source-shortcut diagnostics against their
within-query permutation band, the generated negatives each arm trained on, the generation statistics, what the
numbers say about the paper's three claims, and the plots (PNG next to RESULTS.md); then the zero-shot NQ table
against the stock encoder. Runs that are not there yet are listed, not guessed. The section sits between
:data:`BEGIN` and :data:`END` in RESULTS.md; the rest of the file is left as it is.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

import study_results  # noqa: E402

from causalneg.tracking.compare import paired_test, per_query_frame, pool_queries  # noqa: E402
from causalneg.tracking.render import arm_order, metrics_table, paired_table  # noqa: E402
from causalneg.tracking.report import CompareOptions, build_comparison  # noqa: E402

RESULTS = REPO / "experiments" / "RESULTS.md"
BEGIN, END = "<!-- study:begin (experiments/study_report.py) -->", "<!-- study:end -->"
ARMS = study_results.ARMS
RETRIEVAL = ("test/ndcg@10", "test/recall@100", "test/mrr@10")
DIAGNOSTICS = (
    "diag/mi_knn", "diag/mi_knn_perm_p95", "diag/mi_binned", "diag/mi_binned_perm_p95", "diag/probe_auc_blind",
    "diag/probe_auc_sim", "diag/gen_mass", "diag/gen_mass_expected", "diag/h_gen_norm", "data/generated_kept",
    "data/generated_queries", "data/queries",
)  # fmt: skip
METHODS = {"grounded": "grounded edits", "naive": "naive baseline", "causalneg_official": "official format"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = study_results.study_parser(__doc__)
    parser.add_argument("--study", default=str(study_results.STUDY_DIR), help="committed results folder")
    parser.add_argument("--out", default=str(RESULTS), help="the RESULTS.md to update")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--print", action="store_true", help="print the section, write nothing")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: 50 bootstrap samples; needs --study (a small folder, e.g. from run_study.py --smoke) and an "
        "--out other than the committed RESULTS.md (the plots go beside it)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_bootstrap = 50
        if Path(args.out).resolve() == RESULTS.resolve():
            parser.error("--smoke needs --out PATH (the committed RESULTS.md is not rewritten)")
    return args


def fmt(value: Any, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def mean_of(summary: pd.DataFrame, arm: str, metric: str) -> float:
    rows = summary[(summary["arm"] == arm) & (summary["metric"] == metric)]
    return float(rows["mean"].iloc[0]) if len(rows) else math.nan


def verdict(test: Mapping[str, float], expect: str) -> str:
    """Plain words for a paired difference: ``expect`` is "lower" or "higher" (what the paper claims)."""
    low, high = test.get("ci_low", math.nan), test.get("ci_high", math.nan)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not measured"
    direction = "lower" if high < 0 else "higher" if low > 0 else None
    if direction is None:
        return "no difference resolved (the 95% interval includes 0)"
    return f"{direction} ({'as the paper claims' if direction == expect else 'against the paper'})"


def diagnostics_table(summary: pd.DataFrame, arms: Sequence[str]) -> list[str]:
    """Per arm: MI (k-NN, binned) with the within-query permutation p95, probe AUCs, generated mass vs share."""
    lines = [
        "| arm | MI k-NN (perm p95) | MI binned (perm p95) | blind probe AUC | similarity probe AUC "
        "| gen. mass (share) | H_gen / log Ng | generated negatives kept (queries) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        m = {metric: mean_of(summary, arm, metric) for metric in DIAGNOSTICS}

        def above(value: float, band: float) -> str:
            return " **above**" if math.isfinite(value) and math.isfinite(band) and value > band else ""

        lines.append(
            f"| {arm} | {fmt(m['diag/mi_knn'])} ({fmt(m['diag/mi_knn_perm_p95'])})"
            f"{above(m['diag/mi_knn'], m['diag/mi_knn_perm_p95'])} | {fmt(m['diag/mi_binned'])} "
            f"({fmt(m['diag/mi_binned_perm_p95'])}){above(m['diag/mi_binned'], m['diag/mi_binned_perm_p95'])} | "
            f"{fmt(m['diag/probe_auc_blind'], 3)} | {fmt(m['diag/probe_auc_sim'], 3)} | "
            f"{fmt(m['diag/gen_mass'], 3)} ({fmt(m['diag/gen_mass_expected'], 3)}) | {fmt(m['diag/h_gen_norm'], 3)} | "
            f"{fmt(m['data/generated_kept'], 0)} ({fmt(m['data/generated_queries'], 0)} of "
            f"{fmt(m['data/queries'], 0)}) |"
        )
    return lines


def generation_table(study: Path, dataset: str) -> list[str]:
    lines = [
        "| method | queries | with >= 1 kept | kept | requests per stage | output tok/s | wall s | top rejections |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for folder, label in METHODS.items():
        path = study / dataset / folder / "manifest.json"
        if not path.is_file():
            lines.append(f"| {label} | not generated yet (`{path.relative_to(study.parent)}`) |||||||")
            continue
        c = study_results.read_json(path).get("counts", {})
        top = sorted((c.get("rejections") or {}).items(), key=lambda kv: -kv[1])[:4]
        stages = {k: v.get("requests") for k, v in (c.get("per_stage") or {}).items()}
        lines.append(
            f"| {label} | {c.get('queries')} | {c.get('queries_with_negatives')} | {c.get('negatives_kept')} | "
            f"{stages} | {c.get('tokens_per_s')} | {c.get('wall_seconds')} | "
            f"{', '.join(f'{k} {v}' for k, v in top)} |"
        )
    return lines


def paired_on_queries(
    per_query: pd.DataFrame, metric: str, arm: str, baseline: str, n: int
) -> dict[str, float]:
    pooled = pool_queries(per_query, metric)
    if arm not in pooled.columns or baseline not in pooled.columns:
        return {}
    return paired_test(pooled[arm].to_numpy(), pooled[baseline].to_numpy(), n_bootstrap=n)


def claims(comparison: Any, n: int) -> list[str]:
    """The paper's three claims, each against the measured paired differences."""
    tests = comparison.tests
    ndcg = tests[tests["metric"] == "test/ndcg@10"].set_index("arm")

    def diff(arm: str) -> dict[str, float]:
        return ndcg.loc[arm].to_dict() if arm in ndcg.index else {}

    def said(test: Mapping[str, float], expect: str) -> str:
        if not test:
            return "not measured yet (runs missing)"
        return (
            f"Δ nDCG@10 {fmt(test['mean_diff'])} [{fmt(test['ci_low'])}, {fmt(test['ci_high'])}]: "
            f"{verdict(test, expect)}"
        )

    entropy = paired_on_queries(comparison.per_query, "test/ndcg@10", "grounded", "grounded_no_entropy", n)
    mi_on = mean_of(comparison.summary, "grounded", "diag/mi_knn")
    mi_off = mean_of(comparison.summary, "grounded_no_entropy", "diag/mi_knn")
    mi_words = "MI not measured yet"
    if math.isfinite(mi_on) and math.isfinite(mi_off):
        lower = "lower" if mi_on < mi_off else "not lower"
        mi_words = f"MI k-NN {fmt(mi_on)} with the term vs {fmt(mi_off)} without ({lower})"
    return [
        f"1. *Naive generated negatives hurt* (naive_llm vs mined_only): {said(diff('naive_llm'), 'lower')}.",
        "2. *Counterfactual negatives help* (grounded_no_entropy vs mined_only): "
        f"{said(diff('grounded_no_entropy'), 'higher')}.",
        f"3. *The entropy term lowers the source MI and helps retrieval* (grounded vs grounded_no_entropy): "
        f"{mi_words}; {said(entropy, 'higher')}.",
    ]


def dataset_section(args: argparse.Namespace, dataset: str, plots: Path) -> list[str]:
    study = Path(args.study)
    arms, seeds = [a for a in args.arms.split(",") if a], [s for s in args.seeds.split(",") if s]
    records = [r for r in study_results.load_runs(study, dataset) if r["arm"] in arms]
    missing = study_results.missing_runs(study, dataset, arms, seeds)
    lines = [f"### {dataset}", ""]
    if missing:
        lines += [
            f"Missing runs ({len(missing)}): " + ", ".join(f"{a} seed {s}" for a, s in missing) + ".",
            "",
        ]
    lines += [
        "Generated negatives (committed under `experiments/study/`):",
        "",
        *generation_table(study, dataset),
        "",
    ]
    if not records:
        return [*lines, "No finished runs yet: `python experiments/run_study.py`.", ""]
    run_records = [study_results.to_run_record(r) for r in records]
    stock = study_results.stock_record(records)
    options = CompareOptions(
        f"study-{dataset}", metrics=(*RETRIEVAL, *DIAGNOSTICS), n_bootstrap=args.n_bootstrap
    )
    comparison = build_comparison([*run_records, *([stock] if stock else [])], options)
    order = [a for a in arm_order(comparison.summary["arm"], "mined_only") if a != "stock"]
    order += ["stock"] if stock else []
    scale = sorted({str(r.get("scale")) for r in records})
    hours = sum(float(r.get("seconds") or 0.0) for r in records) / 3600
    lines += [
        f"Retrieval on the test split (every test query, sub-sampled corpus; scale {', '.join(scale)}): mean ± sd "
        "over seeds [95% bootstrap interval over queries]; `stock` is the starting all-MiniLM-L6-v2.",
        "",
        metrics_table(comparison.summary, RETRIEVAL, order),
        "",
        f"Compute: {len(records)} training run{'s' if len(records) != 1 else ''}, {hours:.2f} h in all "
        "(training and test evaluations; the generation's wall time is in the table above).",
        "",
        "Each arm against `mined_only`, per query (seeds averaged): paired bootstrap 95% interval, Wilcoxon "
        "signed-rank p.",
        "",
        paired_table(comparison.tests, [a for a in order if a not in ("mined_only", "stock")]),
        "",
        "Source-shortcut diagnostics (final validation, held-out groups; mean over seeds; **above** = outside the "
        "within-query permutation band):",
        "",
        *diagnostics_table(comparison.summary, [a for a in order if a != "stock"]),
        "",
        "What the numbers show about the paper's claims:",
        "",
        *claims(comparison, args.n_bootstrap),
        "",
    ]
    from causalneg.diagnostics.plots import metric_by_arm, save_figure, shortcut_by_arm

    for name, figure in (
        ("ndcg", metric_by_arm(comparison.summary, "test/ndcg@10", order)),
        ("shortcut", shortcut_by_arm(comparison.summary, [a for a in order if a != "stock"])),
    ):
        if not args.print:
            save_figure(figure, plots / f"study_{dataset}_{name}.png")
        lines.append(f"![{dataset} {name}](study_{dataset}_{name}.png)")
    return [*lines, ""]


def nq_section(args: argparse.Namespace) -> list[str]:
    """Every trained encoder zero-shot on NQ-open against the stock encoder; arms below stock are named."""
    study = Path(args.study)
    stock_path = study / "nq_stock.json"
    lines = ["### Zero-shot on NQ-open (`nq_open_oracle`, every test question)", ""]
    if not stock_path.is_file():
        return [*lines, "The stock encoder's NQ run is missing (`nq_stock.json`).", ""]
    stock = study_results.to_run_record(study_results.read_json(stock_path), part="nq")
    stock_ndcg = stock.metrics.get("test/ndcg@10", math.nan)
    lines += [
        f"Stock all-MiniLM-L6-v2: nDCG@10 {fmt(stock_ndcg)}.",
        "",
        "| trained on | arm | runs | nDCG@10 mean ± sd | Δ vs stock [95% CI over queries] | Wilcoxon p "
        "| below stock? |",
        "|---|---|---|---|---|---|---|",
    ]
    below = []
    for dataset in args.datasets.split(","):
        records = [r for r in study_results.load_runs(study, dataset) if r.get("nq")]
        runs = [study_results.to_run_record(r, part="nq") for r in records]
        per_query = per_query_frame([*runs, stock], ["test/ndcg@10"])
        for arm in arm_order({r.arm for r in runs}, "mined_only"):
            values = np.array([r.metrics.get("test/ndcg@10", math.nan) for r in runs if r.arm == arm])
            test = paired_on_queries(per_query, "test/ndcg@10", arm, "stock", args.n_bootstrap)
            worse = bool(np.nanmean(values) < stock_ndcg)
            if worse:
                significant = test and test["ci_high"] < 0
                below.append(f"{dataset}/{arm}" + (" (significant)" if significant else " (within noise)"))
            sd = f" ± {fmt(np.std(values, ddof=1))}" if values.size > 1 else ""
            lines.append(
                f"| {dataset} | {arm} | {values.size} | {fmt(np.nanmean(values))}{sd} | "
                f"{fmt(test.get('mean_diff'))} [{fmt(test.get('ci_low'))}, {fmt(test.get('ci_high'))}] | "
                f"{fmt(test.get('p_value'), 3)} | {'**yes**' if worse else 'no'} |"
            )
    lines += ["", f"Below stock on NQ: {', '.join(below)}." if below else "No arm is below stock on NQ.", ""]
    return lines


def build_section(args: argparse.Namespace, plots: Path) -> str:
    lines = [BEGIN, "## Study: HotpotQA and SciFact, grounded edits (issue 13)", ""]
    lines += [
        "Rebuilt by `python experiments/study_report.py` from `experiments/study/` (runs by "
        "`python experiments/run_study.py`); Qwen2.5-Coder-1.5B-Instruct Q4_K_M on llama.cpp as the generator, "
        "all-MiniLM-L6-v2 as the encoder.",
        "",
    ]
    for dataset in args.datasets.split(","):
        lines += dataset_section(args, dataset, plots)
    return "\n".join([*lines, *nq_section(args), END]) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with the study section replaced (or inserted before "## Machine and versions", else appended)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + section.rstrip("\n") + rest.split(END, 1)[1]
    anchor = "## Machine and versions"
    if anchor in text:
        head, tail = text.split(anchor, 1)
        return f"{head}{section}\n{anchor}{tail}"
    return text.rstrip("\n") + "\n\n" + section


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    section = build_section(args, out.parent)
    if args.print:
        print(section)
        return 0
    out.write_text(
        replace_section(out.read_text(encoding="utf-8") if out.is_file() else "", section), "utf-8"
    )
    print(f"[study_report] wrote the study section of {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
