"""llama.cpp backend options on the grounded pipeline, side by side: saved prefix states, llguidance masks.

    python experiments/bench_llamacpp_options.py --dataset hotpotqa --queries 2 --threads 2 \
        --arm prefix_states=0,masks=llama_cpp --arm masks=llama_cpp --arm ""
    python experiments/bench_llamacpp_options.py --smoke    # CI: SmolLM2 (GGUF), 1 query, 1 thread

Runs ``run.py stage=generate generation=grounded`` with ``--model`` (default Qwen2.5-Coder-1.5B, needs
``make install-generators``) on the llama.cpp backend on the first ``--queries`` training queries once per
``--arm`` (comma-separated ``generation.backend`` options; ``""`` = the defaults), in that order, each in a
fresh ``CAUSALNEG_HOME`` under a temporary folder, so no request is replayed. Default arms: the backend as it
was (``prefix_states=0,masks=llama_cpp``) and as it is. Reads each arm's request journal and prints per
stage: requests, LLM seconds (the backend's time per request, summed), and the ratio against the first arm;
then how many requests both arms made and how many of those came out the same (saved prefix states change
outputs only by floating-point differences between prefixes evaluated in different batches; llguidance masks
allow only canonical tokens where the grammar forces a string; either can flip a sampled token and what
follows), and the machine's load average (a shared CPU: compare the ratio, not absolutes). ``--json`` also
writes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAUSALNEG_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_ARMS = ("prefix_states=0,masks=llama_cpp", "")


def generate(home: Path, dataset: str, model: str, queries: int, threads: int, arm: str) -> float:
    """One ``stage=generate`` run in ``home``; returns its wall seconds."""
    command = [
        sys.executable, "run.py", "stage=generate", f"dataset={dataset}", "generation=grounded",
        "generation/backend=llamacpp", f"generation/model={model}", f"generation.limit={queries}",
        f"data.max_train_queries={queries}", "generation.max_retries=2", "logger.tracking_uri=null",
        f"generation.backend.n_threads={threads}",
        *(f"generation.backend.{option.strip()}" for option in arm.split(",") if option.strip()),
    ]  # fmt: skip
    env = {**os.environ, "CAUSALNEG_HOME": str(home), "CAUSALNEG_SHARED_DATA": str(SHARED)}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return time.perf_counter() - started


def read_journal(home: Path, dataset: str) -> list[dict[str, Any]]:
    paths = sorted((home / "artifacts" / dataset / "generated" / "journal").glob("*.jsonl"))
    if len(paths) != 1:
        raise SystemExit(f"expected one request journal under {home}, found {[str(p) for p in paths]}")
    return [json.loads(line) for line in paths[0].read_text(encoding="utf-8").splitlines() if line.strip()]


def per_stage(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = defaultdict(lambda: {"requests": 0, "seconds": 0.0})
    for record in records:
        row = table[record["stage"]]
        row["requests"] += 1
        row["seconds"] += float(record.get("seconds") or 0.0)
    table["all"] = {
        "requests": sum(r["requests"] for r in table.values()),
        "seconds": sum(r["seconds"] for r in table.values()),
    }
    return dict(table)


def label(arm: str) -> str:
    return arm or "defaults"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="hotpotqa", choices=["hotpotqa", "scifact"])
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--arm", action="append", default=None, help='KEY=VALUE[,KEY=VALUE] backend options ("": defaults)'
    )
    parser.add_argument("--model", default="qwen_coder_1_5b", help="a conf/generation/model entry (GGUF)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="SmolLM2, 1 query, 1 thread (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.queries, args.threads = "smollm2", 1, 1
    if not SHARED.is_dir():
        raise SystemExit(f"needs the shared data sets at {SHARED} (set CAUSALNEG_SHARED_DATA)")
    arms = args.arm if args.arm is not None else list(DEFAULT_ARMS)
    if len(set(arms)) != len(arms):
        raise SystemExit(f"--arm given twice: {arms}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_llamacpp_options_") as tmp:
        for arm in arms:
            home = Path(tmp) / f"arm{len(results)}"
            wall = generate(home, args.dataset, args.model, args.queries, args.threads, arm)
            records = read_journal(home, args.dataset)
            results[arm] = {"wall_s": wall, "stages": per_stage(records), "records": records}
    base = results[arms[0]]["stages"]
    print(
        f"\n{args.dataset}, {args.model}, {args.queries} queries, {args.threads} threads, "
        f"load {os.getloadavg()}"
    )
    print(f"{'arm':>32} {'stage':>11} {'requests':>8} {'LLM s':>8} {'ratio':>6}")
    for arm in arms:
        for stage, row in sorted(results[arm]["stages"].items()):
            ref = base.get(stage, {}).get("seconds") or float("nan")
            print(
                f"{label(arm):>32} {stage:>11} {row['requests']:8.0f} "
                f"{row['seconds']:8.1f} {row['seconds'] / ref:6.2f}"
            )
        print(f"{'':>32} {'wall':>11} {'':>8} {results[arm]['wall_s']:8.1f}")
    first = {r["key"]: r["text"] for r in results[arms[0]]["records"]}
    for arm in arms[1:]:
        other = {r["key"]: r["text"] for r in results[arm]["records"]}
        shared = set(first) & set(other)
        same = sum(first[k] == other[k] for k in shared)
        print(
            f"{label(arm)} against {label(arms[0])}: {len(shared)} requests in both "
            f"({len(first)} and {len(other)} in all), {same} with the same output"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {label(a): {k: v for k, v in r.items() if k != "records"} for a, r in results.items()},
                indent=2,
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
