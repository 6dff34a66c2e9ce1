"""The CausalNeg study on this CPU, end to end and resumable (issue 13, "The study on this CPU").

    python experiments/run_study.py                 # generate what is missing, train what is missing, export
    python experiments/run_study.py --dry-run       # print every command, run none
    python experiments/run_study.py --smoke --study /tmp/study   # CI: one tiny arm end to end, temp folders
    python experiments/study_report.py              # rebuild experiments/RESULTS.md from the committed JSON

Per data set (HotpotQA distractor subset, SciFact; ``../shared/data``), Qwen2.5-Coder-1.5B on llama.cpp:

1. **Generation, on the full data set** (the grounded edits' verification reads the corpus's document
   frequencies), with exactly the overrides of ``experiments/grounded_check.py`` (``overrides``): the grounded
   edits for the ``--queries`` training queries, the naive baseline for ``--naive-queries`` of them (through
   outlines), and, for the record only, the official-format method for ``--official-queries``. The journal is
   ``experiments/grounded/journal/<dataset>-<model>.jsonl`` (shared with grounded_check: the same requests),
   seeded into the live one before and copied back after each command. The complete artifact is copied to
   ``experiments/study/<dataset>/<method>/``; a committed artifact is never regenerated (``--regenerate``).
2. **Training**, every arm x seed on a seeded sub-sample of the data set (:mod:`causalneg.data.sources.subsample`:
   the ``--queries`` training queries, which are the generation's queries, ``--dev-queries`` dev queries, every
   test query, their judged and hard-negative passages and ``--random-passages`` others), 1 epoch, fp32, MLflow
   experiment ``study-<dataset>``, output folder ``$CAUSALNEG_HOME/study/<dataset>/<arm>-seed<k>``. The arms
   read the committed artifact (``data.generated_artifact``), so every arm trains on the same queries.
3. **Export**: the run's metrics and per-query test values, and its exported encoder evaluated zero-shot on
   ``nq_open_oracle``, go to ``experiments/study/<dataset>/runs/<arm>-seed<k>.json`` (:mod:`study_results`); the
   stock encoder's NQ numbers to ``experiments/study/nq_stock.json``.

Resume: a run with a committed JSON is skipped; a FINISHED MLflow run whose folder holds its model is exported
without retraining; an interrupted run resumes from its ``last.ckpt`` (same folder); generation resumes from the
journal. Commit ``experiments/study`` and ``experiments/grounded/journal`` between sessions.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

import grounded_check  # noqa: E402  (the generation overrides, journal sync and artifact copy are its own)
import study_results  # noqa: E402

ARMS = study_results.ARMS
ARM_METHOD = {"naive_llm": "naive", "grounded_no_entropy": "grounded", "grounded": "grounded"}
OFFICIAL = "causalneg_official"  # artifact folder of the official-format method (generation=causalneg)
DEFAULT_QUERIES = 256
HOME = Path(os.environ.get("CAUSALNEG_HOME", REPO)).resolve()
STUDY = study_results.STUDY_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = study_results.study_parser(__doc__)
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES, help="training queries per data set")
    parser.add_argument("--naive-queries", type=int, default=None, help="naive negatives for (default: all)")
    parser.add_argument(
        "--official-queries", type=int, default=32, help="official method, record only (0: off)"
    )
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (1 on a shared CPU)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dev-queries", type=int, default=50, help="dev queries kept (validation)")
    parser.add_argument("--random-passages", type=int, default=1000, help="unjudged passages kept besides")
    parser.add_argument("--gpu", action="store_true", help="trainer=gpu instead of fp32 on the CPU")
    parser.add_argument("--skip-generate", action="store_true", help="train on committed negatives only")
    parser.add_argument(
        "--regenerate", action="store_true", help="generate even where negatives are committed"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    parser.add_argument("--extra", default="", help="extra overrides for every training command")
    parser.add_argument("--study", default=None, help="results folder (default: experiments/study)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: SciFact, the mined_only arm, seed 0, 8 training queries, no generation, NQ on 20 test "
        "questions; results and runs in temporary folders (experiments/study is not touched)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets, args.arms, args.seeds, args.skip_generate = "scifact", "mined_only", "0", True
        args.queries, args.dev_queries, args.random_passages, args.official_queries = 8, 4, 20, 0
        args.threads = 1
        args.extra = " ".join(
            [
                "data.batch_size=4",
                "data.num_mined=2",
                "+dataset.test_queries=20",
                "eval.dev_subcorpus_random=20",
                "runtime.num_threads=1",
                args.extra,
            ]
        )
    return args


SMOKE_NQ = [  # --smoke: NQ zero-shot on 20 test questions, their passages and 20 others
    "dataset._target_=causalneg.data.sources.subsample.load_beir_subsample",
    "+dataset.train_queries=1",
    "+dataset.dev_queries=1",
    "+dataset.test_queries=20",
    "+dataset.random_passages=20",
    "runtime.num_threads=1",
]
NQ_EXTRA: list[str] = []


def seeds(args: argparse.Namespace) -> list[str]:
    return [s for s in args.seeds.split(",") if s]


def scale_tag(args: argparse.Namespace) -> str:
    return f"q{args.queries}"


def with_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with every key that ``extra`` sets replaced by ``extra``'s value (Hydra refuses a key twice)."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in extra}
    return [o for o in base if o.split("=", 1)[0].lstrip("+~") not in keys] + extra


def generation_limit(args: argparse.Namespace, method: str) -> int:
    if method == "naive" and args.naive_queries:
        return min(args.naive_queries, args.queries)
    return args.official_queries if method == "causalneg" else args.queries


def generation_overrides(args: argparse.Namespace, dataset: str, method: str) -> list[str]:
    """``stage=generate`` on the full data set: grounded_check's overrides (the journal's requests)."""
    base = grounded_check.overrides(dataset, method, generation_limit(args, method))
    if method == "causalneg":  # like naive: llama.cpp's converter refuses the schema's long strings
        base = with_overrides(base, ["generation.backend.grammar=outlines", "generation.max_retries=0"])
    return [*base, f"generation.backend.n_threads={args.threads}"]


def artifact_folder(dataset: str, method: str) -> Path:
    return STUDY / dataset / (OFFICIAL if method == "causalneg" else method)


def training_overrides(args: argparse.Namespace, dataset: str, arm: str, seed: str) -> list[str]:
    q = args.queries
    overrides = [
        f"+experiment={arm}",
        f"seed={seed}",
        f"dataset={dataset}",
        "dataset._target_=causalneg.data.sources.subsample.load_beir_subsample",
        f"+dataset.train_queries={q}",
        f"+dataset.dev_queries={args.dev_queries}",
        "+dataset.test_queries=null",
        f"+dataset.random_passages={args.random_passages}",
        f"eval.dev_subcorpus_random={min(args.random_passages, 500)}",
        "model=minilm",
        f"data.max_train_queries={q}",
        f"logger.experiment_name=study-{dataset}",
        f"+logger.tags.scale={scale_tag(args)}",
        f"trainer.max_epochs={args.epochs}",
        "trainer=gpu" if args.gpu else "trainer.precision=32-true",
        f"hydra.run.dir={run_dir(dataset, arm, seed)}",
    ]
    method = ARM_METHOD.get(arm)
    if method is not None:  # the generator's config, as generated (provenance), and the committed negatives
        generation = [
            o
            for o in grounded_check.overrides(dataset, method, generation_limit(args, method))
            if o.startswith("generation")
        ]
        overrides += [*generation, f"data.generated_artifact={artifact_folder(dataset, method)}"]
    return with_overrides(overrides, shlex.split(args.extra))


def run_dir(dataset: str, arm: str, seed: str) -> Path:
    return HOME / "study" / dataset / f"{arm}-seed{seed}"


def nq_overrides(model_dir: Path | None, out: Path, arm: str, seed: str, trained_on: str) -> list[str]:
    """``stage=evaluate`` on NQ-open (zero-shot): the stock MiniLM, or the exported encoder in ``model_dir``."""
    model = ["model=minilm"] + (
        [] if model_dir is None else ["model.source=path", f"model.name_or_path={model_dir}"]
    )
    return [
        "stage=evaluate",
        "dataset=nq",
        *model,
        f"arm={arm}",
        f"seed={seed}",
        "logger.experiment_name=study-nq",
        f"+logger.tags.trained_on={trained_on}",
        f"hydra.run.dir={out}",
        *NQ_EXTRA,
    ]


def run_command(overrides: list[str], dry_run: bool) -> int:
    command = [sys.executable, str(REPO / "run.py"), *overrides]
    print("$", shlex.join(command), flush=True)
    if dry_run:
        return 0
    env = {**os.environ, "CAUSALNEG_HOME": str(HOME)}
    return subprocess.run(command, cwd=REPO, env=env, check=False).returncode


def generate(args: argparse.Namespace, dataset: str, method: str) -> bool:
    """Generate (resuming from the committed journal) unless the artifact is committed; True when it is there."""
    target = artifact_folder(dataset, method)
    if (target / "manifest.json").is_file() and not args.regenerate:
        print(f"[study] {dataset}/{method}: committed negatives in {target.relative_to(REPO)}", flush=True)
        return True
    if args.skip_generate or generation_limit(args, method) <= 0:
        return False
    if args.dry_run:
        print(
            f"[study] would seed the journal from {grounded_check.OUT / 'journal'}, generate, copy to {target}"
        )
        return run_command(generation_overrides(args, dataset, method), True) == 0
    os.environ["CAUSALNEG_HOME"] = str(HOME)
    cfg = grounded_check.compose(grounded_check.overrides(dataset, method, generation_limit(args, method)))
    from causalneg.stages.common import load_dataset

    data = load_dataset(cfg)
    live = grounded_check.journal_of(cfg, data)
    committed = grounded_check.OUT / "journal" / f"{dataset}-{live.name}"
    grounded_check.sync_journal(live, committed)
    code = run_command(generation_overrides(args, dataset, method), False)
    grounded_check.merge_journal(committed, live)  # keep what was generated, even after a failure
    return code == 0 and grounded_check.copy_artifact(cfg, data, target) is not None


def finished_runs(experiment: str, scale: str) -> dict[tuple[str, str], str]:
    """(arm, seed) -> run id of FINISHED training runs in ``experiment`` at this scale (the local store)."""
    store = HOME / "mlruns" / "mlflow.db"
    if not store.is_file():
        return {}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    return {
        (r.data.tags.get("arm", ""), r.data.tags.get("seed", "")): r.info.run_id
        for r in runs
        if r.data.tags.get("scale") == scale and r.data.tags.get("stage") == "train"
    }


def read_mlflow_run(run_id: str) -> tuple[dict[str, float], dict[str, dict[str, float]], float | None]:
    """Final metrics (canonical names), per-query test values and wall seconds of a run in the local store."""

    from mlflow.tracking import MlflowClient

    from causalneg.tracking.mlflow_io import PER_QUERY_ARTIFACT, read_per_query
    from causalneg.tracking.names import metric_name_from_mlflow

    client = MlflowClient(tracking_uri=f"sqlite:///{HOME / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    metrics = {metric_name_from_mlflow(k): float(v) for k, v in run.data.metrics.items()}
    start, end = run.info.start_time, run.info.end_time
    seconds = (end - start) / 1000 if start and end else None
    with tempfile.TemporaryDirectory(prefix="study-") as tmp:
        return metrics, read_per_query(client, run_id, PER_QUERY_ARTIFACT, tmp), seconds


def evaluate_nq(
    model_dir: Path | None, out: Path, arm: str, seed: str, trained_on: str
) -> dict[str, Any] | None:
    """Zero-shot NQ metrics and per-query values of ``model_dir`` (None: the stock encoder); None on failure."""
    if run_command(nq_overrides(model_dir, out, arm, seed, trained_on), False) != 0:
        return None
    return {
        "metrics": study_results.read_json(out / "metrics.json"),
        "per_query": study_results.read_json(out / "per_query.json"),
    }


def export_run(args: argparse.Namespace, dataset: str, arm: str, seed: str, run_id: str) -> bool:
    folder = run_dir(dataset, arm, seed)
    nq = evaluate_nq(folder / "model", folder / "nq", arm, seed, dataset)
    if nq is None:  # nothing committed: the next run evaluates again (the trained model stays in its folder)
        return False
    metrics, per_query, seconds = read_mlflow_run(run_id)
    record = study_results.run_result(
        dataset, arm, seed, scale_tag(args), run_id, metrics, per_query, nq, seconds=seconds
    )
    path = study_results.write_json(study_results.run_json_path(STUDY, dataset, arm, seed), record)
    print(f"[study] exported {path}", flush=True)
    return True


def study_dataset(args: argparse.Namespace, dataset: str) -> list[str]:
    """Generate, train and export one data set; returns what failed."""
    failures = []
    arms = [a for a in args.arms.split(",") if a]
    methods = sorted({ARM_METHOD[a] for a in arms if a in ARM_METHOD})
    ready = {m: generate(args, dataset, m) for m in methods}
    todo = study_results.missing_runs(STUDY, dataset, arms, seeds(args), scale_tag(args))
    done = {} if args.dry_run else finished_runs(f"study-{dataset}", scale_tag(args))
    for arm, seed in todo:
        if arm in ARM_METHOD and not ready[ARM_METHOD[arm]] and not args.dry_run:
            failures.append(f"{dataset}: {arm} seed={seed} (no generated negatives)")
            continue
        if (arm, seed) not in done or not (run_dir(dataset, arm, seed) / "model").is_dir():
            if run_command(training_overrides(args, dataset, arm, seed), args.dry_run) != 0:
                failures.append(f"{dataset}: {arm} seed={seed} (training)")
                continue
            done = {} if args.dry_run else finished_runs(f"study-{dataset}", scale_tag(args))
        if args.dry_run:
            folder = run_dir(dataset, arm, seed)
            run_command(nq_overrides(folder / "model", folder / "nq", arm, seed, dataset), True)
            continue
        if (arm, seed) not in done or not export_run(args, dataset, arm, seed, done[(arm, seed)]):
            failures.append(f"{dataset}: {arm} seed={seed} (export / NQ evaluation)")
    if args.official_queries and not generate(args, dataset, "causalneg"):
        failures.append(f"{dataset}: official-format generation (record only)")
    return failures


def stock_nq(args: argparse.Namespace) -> list[str]:
    path = STUDY / "nq_stock.json"
    if path.is_file():
        return []
    if args.dry_run:
        run_command(nq_overrides(None, HOME / "study" / "nq_stock", "stock", "0", "none"), True)
        return []
    nq = evaluate_nq(None, HOME / "study" / "nq_stock", "stock", "0", "none")
    if nq is None:
        return ["stock encoder on NQ"]
    study_results.write_json(path, study_results.run_result("nq", "stock", 0, "-", "", {}, {}, nq))
    return []


def main(argv: list[str] | None = None) -> int:
    global HOME, STUDY
    args = parse_args(argv)
    if args.study is not None:
        STUDY = Path(args.study).resolve()
    if args.smoke:
        smoke = tempfile.mkdtemp(prefix="study-smoke-")
        HOME = Path(smoke) / "home"
        STUDY = STUDY if args.study is not None else Path(smoke) / "study"
        NQ_EXTRA[:] = SMOKE_NQ
        print(f"[study] smoke: runs in {HOME}, results in {STUDY}", flush=True)
    failures = stock_nq(args)
    for dataset in args.datasets.split(","):
        failures += study_dataset(args, dataset)
    for dataset in args.datasets.split(","):
        missing = study_results.missing_runs(
            STUDY, dataset, args.arms.split(","), seeds(args), scale_tag(args)
        )
        print(f"[study] {dataset}: {len(missing)} run(s) without committed results", flush=True)
    if failures:
        print("failed:", *failures, sep="\n  ")
    if args.smoke:
        shutil.rmtree(HOME.parent, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
