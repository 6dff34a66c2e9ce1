"""Markdown for the study's report: generation statistics and examples, then the compare stage's tables.

    python experiments/study_report.py [--datasets hotpotqa,scifact] [run_study options] > report.md

Reads what ``experiments/run_study.py`` (same options) left under ``$CAUSALNEG_HOME``: for each data set the
CausalNeg and naive generation artifacts (``manifest.json`` counts, ``rejected.jsonl``, ``decompositions.jsonl``,
``rows.jsonl``) and the compare stage's ``summary.md`` / ``paired_tests.csv``. Prints, per data set: a table of
requests, schema-valid rate, negatives kept / rejected and tokens/s per method; rejection reasons; one
decomposition; kept and rejected negatives next to their query and positive; then the per-arm tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_study  # the same options and overrides as the study itself

REPO = run_study.REPO


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="run", overrides=[*overrides, "hydra.runtime.output_dir=/tmp"])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def clip(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def generation_section(dataset_name: str, args: argparse.Namespace) -> list[str]:
    from causalneg.generation.artifact import generated_artifact_dir
    from causalneg.stages.common import load_dataset

    base = run_study.common_overrides(args, dataset_name)
    lines = [f"### Generation on {dataset_name}", ""]
    table = [
        "| method | queries | requests | schema-valid | negatives kept | rejected | kept rate | queries with negatives "
        "| output tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    details: list[str] = []
    dataset = None
    for method in ("causalneg", "naive"):
        cfg = compose([*base, f"generation={method}"])
        dataset = dataset or load_dataset(cfg)
        directory = generated_artifact_dir(cfg, dataset)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            table.append(f"| {method} | (no complete artifact at {directory}) |||||||")
            continue
        counts = json.loads(manifest_path.read_text())["counts"]
        table.append(
            f"| {method} | {counts.get('queries')} | {counts.get('requests')} | {counts.get('validity_rate', 0):.1%} "
            f"| {counts.get('negatives_kept')} | {counts.get('negatives_rejected')} | {counts.get('kept_rate', 0):.1%} "
            f"| {counts.get('queries_with_negatives')} | {counts.get('tokens_per_s', 0):.1f} |"
        )
        rejected = read_jsonl(directory / "rejected.jsonl")
        reasons = Counter(r["reason"] for r in rejected)
        details.append(
            f"**{method}: rejection reasons** — " + ", ".join(f"{k} {v}" for k, v in reasons.most_common())
        )
        details.append("")
        split = dataset.split(str(cfg.generation.split))
        rows = read_jsonl(directory / "rows.jsonl")
        if method == "causalneg":
            decompositions = read_jsonl(directory / "decompositions.jsonl")
            if decompositions:
                first = decompositions[0]
                qid = first.get("query_id", "")
                details += [
                    f"Example decomposition (query `{qid}`: *{clip(split.queries[qid].text, 200)}*):",
                    "",
                    "```json",
                    json.dumps(first.get("decomposition", first), indent=1, ensure_ascii=False)[:2500],
                    "```",
                    "",
                ]
        for row in rows[:2]:
            qid = row["query_id"]
            details.append(f"Kept ({method}), query *{clip(split.queries[qid].text, 200)}*:")
            for negative in row["negatives"][:3]:
                strategy = negative.get("strategy") or negative.get("violates") or ""
                details.append(
                    f"- {clip(negative['text'])}" + (f" (`{clip(str(strategy), 80)}`)" if strategy else "")
                )
            details.append("")
        for reason, _ in reasons.most_common(4):
            example = next(r for r in rejected if r["reason"] == reason)
            detail = f": {clip(example['detail'], 120)}" if example.get("detail") else ""
            text = clip(example.get("text") or example.get("raw") or "", 240)
            details.append(f"Rejected ({method}, **{reason}**{detail}): {text}")
        details.append("")
    return [*lines, *table, "", *details]


def compare_section(dataset_name: str) -> list[str]:
    out = run_study.HOME / "study" / dataset_name / "compare"
    lines = [f"### Retrieval and diagnostics on {dataset_name}", ""]
    summary = out / "summary.md"
    if not summary.is_file():
        return [*lines, f"(no compare output at {out})", ""]
    lines += [summary.read_text(encoding="utf-8").strip(), ""]
    paired = out / "paired_tests.csv"
    if paired.is_file():
        lines += [
            "Paired tests against the baseline arm (per query):",
            "",
            "```",
            paired.read_text().strip(),
            "```",
            "",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = run_study.parse_args(argv)
    lines: list[str] = []
    for name in args.datasets.split(","):
        lines += generation_section(name, args)
        lines += compare_section(name)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
