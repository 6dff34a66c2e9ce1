"""What each substitute rule would remove from a grounded artifact, by the label a person gave each kept negative.

    python experiments/grounded_rules.py --dataset scifact --artifact <dir with rows.jsonl>
    git show acc915b:experiments/grounded/scifact/grounded/rows.jsonl > /tmp/rows.jsonl   # the rule analysis
    python experiments/grounded_rules.py --dataset scifact --artifact /tmp
    python experiments/grounded_rules.py --smoke    # CI: SciFact's committed artifact

The evidence behind ``verify.substitute_in_corpus``, ``verify.generic_df``, ``verify.same_thing_threshold``,
``verify.core_sentences`` (``peripheral_edit``, under the stock encoder) and the "A20 (TNFAIP3)" alias
(:func:`causalneg.generation.grounded.edits.names_before`): every kept negative of an artifact built *before* a
rule, its label from ``experiments/grounded/labels.yaml`` (keys of ``grounded_check.sample_key``), and whether the
rule rejects it. A rule earns its place when it removes many "still answers" and "nonsense" negatives and few real
ones. The chosen rules: ``substitute_unseen``, ``substitute_generic``, ``same_thing >= 0.55`` and
``peripheral_edit``; the alias rule rejects nothing (it replaces the other name too). The rules are evaluated as
:mod:`causalneg.generation.grounded.verify` applies them (the same functions), on the recorded ``p_same_thing``.
Unlabelled negatives are counted apart.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

from grounded_check import LABELS, load_dataset_for, load_labels, read_jsonl, sample_key  # noqa: E402

THRESHOLDS = (0.5, 0.53, 0.55, 0.6)


def rules_hit(negative: dict[str, Any], positive: str, vocabulary: Any, generic_df: float) -> dict[str, bool]:
    """Which rules reject this kept negative, and whether the alias rule now edits it further (``alias_before``:
    "A20 (TNFAIP3)" -> every "A20" is replaced too; that rule rejects nothing). A sentence drop has no
    substitute."""
    from causalneg.generation.grounded.edits import names_before
    from causalneg.generation.grounded.verify import _generic_for

    edit, substitute = negative["edit"], negative["edit"].get("replacement", "")
    hits = {"alias_before": bool(edit["operation"] == "replace" and names_before(positive, edit["original"]))}
    replaced = edit["operation"] == "replace" and bool(substitute)
    hits["substitute_unseen"] = (
        replaced and not any(c.isdigit() for c in substitute) and not vocabulary.names(substitute)
    )
    hits["substitute_generic"] = replaced and _generic_for(
        substitute, edit["original"], vocabulary, generic_df
    )
    p_same = negative.get("p_same_thing")
    for threshold in THRESHOLDS:
        hits[f"same_thing>={threshold}"] = p_same is not None and p_same >= threshold
    return hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=("hotpotqa", "scifact"))
    parser.add_argument("--artifact", type=Path, help="folder with the artifact's rows.jsonl")
    parser.add_argument("--home", default="/tmp/cnhome")
    parser.add_argument("--generic-df", type=float, default=0.1)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: SciFact and its committed artifact (experiments/grounded/scifact/grounded); needs ../shared/data",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.dataset = args.dataset or "scifact"
        args.artifact = args.artifact or REPO / "experiments" / "grounded" / args.dataset / "grounded"
    if args.dataset is None or args.artifact is None:
        parser.error("--dataset and --artifact are required (or --smoke)")
    shared = Path(os.environ.get("CAUSALNEG_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not shared.is_dir():
        raise SystemExit(f"shared data sets not found at {shared} (set CAUSALNEG_SHARED_DATA)")

    from causalneg.generation.grounded.inputs import document_frequency
    from causalneg.generation.grounded.spans import split_sentences
    from causalneg.generation.grounded.verify import VerifyConfig, check_core, core_sentences
    from causalneg.stages.generate_grounded import build_similarity

    cfg, dataset = load_dataset_for(args.dataset, args.home)
    vocabulary = document_frequency(dataset)
    similarity = build_similarity(cfg)
    queries = dataset.split(cfg.dataset.train_split).queries

    def peripheral(negative: dict[str, Any], positive: str, query: str) -> bool:
        """``peripheral_edit`` at the default core_sentences / core_min_sentences (the stock encoder)."""
        if similarity is None:
            return False
        sentences = split_sentences(" ".join(positive.split()))
        core = core_sentences(sentences, similarity(query, sentences), VerifyConfig())
        return not check_core(negative["text"], core).kept

    labels = load_labels()
    every: Counter[str] = Counter()
    removed: dict[str, Counter[str]] = {}
    removed_by_any: Counter[str] = Counter()
    for row in read_jsonl(args.artifact / "rows.jsonl"):
        for negative in row["negatives"]:
            label = labels.get(sample_key(args.dataset, row["query_id"], negative["text"]), {}).get(
                "label", "unlabelled"
            )
            every[label] += 1
            positive = dataset.corpus[negative.get("positive_id", row["positive_id"])].full_text
            hits = rules_hit(negative, positive, vocabulary, args.generic_df)
            hits["peripheral_edit"] = peripheral(negative, positive, queries[row["query_id"]].text)
            for rule, hit in hits.items():
                removed.setdefault(rule, Counter())[label] += hit
            chosen = ("substitute_unseen", "substitute_generic", "same_thing>=0.55", "peripheral_edit")
            removed_by_any[label] += any(hits[r] for r in chosen)
    columns = [*LABELS, "unlabelled"]
    print(f"{args.dataset}: {sum(every.values())} kept negatives in {args.artifact}")
    print("| rule | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    print("| (all kept) | " + " | ".join(str(every[c]) for c in columns) + " |")
    for rule, counts in removed.items():
        print(f"| {rule} | " + " | ".join(str(counts[c]) for c in columns) + " |")
    print(
        "| rejected by any of the chosen rules | "
        + " | ".join(str(removed_by_any[c]) for c in columns)
        + " |"
    )
    print("(alias_before rejects nothing: it marks the negatives the alias rule now edits further)")
    left = {c: every[c] - removed_by_any[c] for c in columns}
    read = sum(left[c] for c in LABELS)
    if read:
        print(
            "left, of those read: "
            + ", ".join(f"{c} {left[c]} ({left[c] / read:.0%})" for c in LABELS)
            + f" (before: {every['real hard negative'] / max(1, sum(every[c] for c in LABELS)):.0%} real)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
