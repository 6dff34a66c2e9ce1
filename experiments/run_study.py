"""The CausalNeg comparison study, end to end and resumable (issue: "The study").

For each data set: generate the CausalNeg and the naive negatives once (shared by every arm and seed), then train
every arm x seed into one MLflow experiment (``study-<dataset>``), then run ``stage=compare`` on it. A rerun
skips finished training runs (a FINISHED MLflow run with the same arm, seed and scale tag) and finished
generation requests (the generate stage is content-addressed and journaled).

    python experiments/run_study.py                       # the CPU scale (see DEFAULT_SCALE below)
    python experiments/run_study.py --scale 8 --gpu       # the same study larger, on a GPU machine
    python experiments/run_study.py --dry-run             # print the commands only

CPU scale (2 cores, about 90 minutes with the generator's time): every data set is sub-sampled once
(:mod:`causalneg.data.sources.subsample`: ``--queries`` training queries, ``--test-queries`` test queries,
``--dev-queries`` dev queries, their judged and hard-negative passages plus ``--random-passages`` others), then
Nm=7 mined + Ng=3 generated negatives per query, 1 epoch, fp32 (this CPU has no native bf16). ``--scale k``
multiplies the training queries by k (and uses the reference Nm=15 when k >= 4); ``--full-corpus`` evaluates on
the whole corpus and every test query.

Outputs (MLflow store, artifacts, caches) go under ``$CAUSALNEG_HOME`` (default: the repository).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS_PRIMARY = ("mined_only", "random_negatives", "naive_llm", "causalneg_no_entropy", "causalneg")
ARMS_SECONDARY = ("mined_only", "naive_llm", "causalneg_no_entropy", "causalneg")
DEFAULT_QUERIES = 48
HOME = Path(os.environ.get("CAUSALNEG_HOME", REPO)).resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="hotpotqa,scifact")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES, help="training queries per data set")
    parser.add_argument("--scale", type=int, default=1, help="multiply the training queries (GPU runs)")
    parser.add_argument("--generator", default="qwen_coder_1_5b", help="generation/model preset")
    parser.add_argument("--backend", default="vllm", help="generation/backend preset")
    parser.add_argument("--gpu", action="store_true", help="trainer=gpu instead of the CPU preset")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--test-queries", type=int, default=200, help="test queries kept (sub-sampled corpus)"
    )
    parser.add_argument("--dev-queries", type=int, default=50, help="dev queries kept (validation)")
    parser.add_argument("--random-passages", type=int, default=1000, help="unjudged passages kept besides")
    parser.add_argument("--full-corpus", action="store_true", help="no sub-sampling (GPU machines)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--extra", default="", help="extra overrides for every command, space-separated")
    return parser.parse_args(argv)


def common_overrides(args: argparse.Namespace, dataset: str) -> list[str]:
    queries = args.queries * args.scale
    overrides = [
        f"dataset={dataset}",
        "model=minilm",
        f"data.max_train_queries={queries}",
        f"generation/model={args.generator}",
        f"generation/backend={args.backend}",
        f"logger.experiment_name=study-{dataset}",
        f"+logger.tags.scale=q{queries}",
        f"trainer.max_epochs={args.epochs}",
        "trainer=gpu" if args.gpu else "trainer.precision=32-true",
    ]
    if not args.full_corpus:
        overrides += [
            "dataset._target_=causalneg.data.sources.subsample.load_beir_subsample",
            f"+dataset.train_queries={queries}",
            f"+dataset.dev_queries={args.dev_queries}",
            f"+dataset.test_queries={args.test_queries}",
            f"+dataset.random_passages={args.random_passages}",
            f"eval.dev_subcorpus_random={min(args.random_passages, 500)}",
        ]
    if args.scale >= 4:
        overrides += ["data.num_mined=15"]
    return overrides + shlex.split(args.extra)


def run_command(overrides: list[str], dry_run: bool) -> int:
    command = [sys.executable, str(REPO / "run.py"), *overrides]
    print("$", shlex.join(command), flush=True)
    if dry_run:
        return 0
    return subprocess.run(command, cwd=REPO, check=False).returncode


def finished_runs(experiment: str, scale_tag: str) -> set[tuple[str, str]]:
    """(arm, seed) pairs with a FINISHED run in ``experiment`` (the default local store)."""
    import mlflow

    uri = f"sqlite:///{HOME / 'mlruns' / 'mlflow.db'}"
    if not (HOME / "mlruns" / "mlflow.db").is_file():
        return set()
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    return {
        (r.data.tags.get("arm", ""), r.data.tags.get("seed", ""))
        for r in runs
        if r.data.tags.get("scale") == scale_tag and r.data.tags.get("stage") == "train"
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failures = []
    for index, dataset in enumerate(args.datasets.split(",")):
        base = common_overrides(args, dataset)
        arms = ARMS_PRIMARY if index == 0 else ARMS_SECONDARY
        for method in ("causalneg", "naive"):
            if run_command(["stage=generate", *base, f"generation={method}"], args.dry_run) != 0:
                failures.append(f"{dataset}: generation={method}")
        done = set() if args.dry_run else finished_runs(f"study-{dataset}", f"q{args.queries * args.scale}")
        for arm in arms:
            for seed in args.seeds.split(","):
                if (arm, seed) in done:
                    print(f"skip {dataset} {arm} seed={seed}: finished run exists", flush=True)
                    continue
                if run_command([f"+experiment={arm}", f"seed={seed}", *base], args.dry_run) != 0:
                    failures.append(f"{dataset}: {arm} seed={seed}")
        compare_dir = HOME / "study" / dataset
        run_command(
            ["stage=compare", f"compare.experiment=study-{dataset}", *base, f"hydra.run.dir={compare_dir}"],
            args.dry_run,
        )
    if failures:
        print("failed:", *failures, sep="\n  ")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
