"""Generation throughput: the transformers, vllm (batched) and llamacpp (GGUF as it is) backends, same requests.

    python experiments/bench_generation.py --model smollm2 --n 32
    python experiments/bench_generation.py --model qwen_coder_1_5b --n 32 --backends transformers,vllm
    python experiments/bench_generation.py --model qwen_coder_1_5b --n 8 --backends llamacpp,vllm --threads 2
    python experiments/bench_generation.py --model qwen_coder_1_5b --n 6 --threads 2 \
        --backends llamacpp,llamacpp:parallel=6,vllm     # two llama.cpp settings against vLLM in one run
    python experiments/bench_generation.py --smoke      # CI: a tiny random Llama, transformers, 2 queries

Every backend runs the whole CausalNeg path (decompose -> perturb -> filter, helper code from
``causalneg.generation``) on the same ``--n`` HotpotQA training queries (``../shared/data/
hotpotqa_distractor_subset``, the queries ``stage=generate`` would select, 5 BM25 candidates each) with no
retries, each with a fresh request journal in a temporary folder (nothing is reused or left behind). The
decompose requests are identical for every backend; the perturb requests depend on each backend's
decompositions. Printed per backend and stage: requests, wall seconds inside ``backend.generate``,
requests/s, output tokens/s, schema-valid rate, then negatives kept / rejected after the filters, kept rate,
and the share of kept negatives whose raw output re-validates against its schema (must be 100%); finally the
ratios between the backends that ran (vllm/transformers, llamacpp/vllm, llamacpp/transformers) and the
machine's load average (the CPU is shared: compare ratios, not absolutes).

Threads: the transformers backend runs in this process with ``--threads`` torch threads; vLLM-CPU's worker
binds ``--threads`` cores (``VLLM_CPU_OMP_THREADS_BIND``); llama.cpp runs ``--threads`` threads
(``n_threads``), so all use the same number of cores. llamacpp loads the quantized GGUF file itself (the
Qwen parts are concatenated once into the cache dir), the others the dequantised HF folder; it decodes up to
``generation.backend.parallel`` requests together (``--llamacpp-option parallel=1``: one at a time;
``--llamacpp-option grammar=outlines`` switches its grammar path).
vLLM's engine is started under this script's ``__main__`` guard (it uses spawn multiprocessing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAUSALNEG_SHARED_DATA", REPO.parent / "shared" / "data"))
STAGES = ("decompose", "perturb", "naive")
RATIOS = (("vllm", "transformers"), ("llamacpp", "vllm"), ("llamacpp", "transformers"))


class TimedBackend:
    """Wraps a backend; records wall time, requests and output tokens of every ``generate`` call per stage."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.model_id = inner, inner.name, inner.model_id
        self.seconds: dict[str, float] = {}
        self.requests: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def generate(self, requests: Sequence[Any], schema: Any, sampling: Any) -> list[Any]:
        name = schema.__name__
        stage = "decompose" if name == "Decomposition" else "naive" if name.startswith("Naive") else "perturb"
        start = time.perf_counter()
        outputs: list[Any] = self.inner.generate(requests, schema, sampling)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        self.requests[stage] += len(requests)
        self.tokens[stage] += sum(o.output_tokens for o in outputs)
        self.errors[stage] += sum(o.error is not None for o in outputs)
        return outputs

    def close(self) -> None:
        self.inner.close()


def compose(model: str, backend: str, n: int, root: Path, overrides: Sequence[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import causalneg.config  # noqa: F401  (registers resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(
            config_name="run",
            overrides=[
                "stage=generate",
                "dataset=hotpotqa",
                f"generation/model={model}",
                f"generation/backend={backend}",
                f"generation.limit={n}",
                "generation.max_retries=0",
                "generation.progress=false",
                f"paths.root_dir={root}",
                f"paths.cache_dir={os.environ.get('CAUSALNEG_CACHE_DIR', REPO / '.cache')}",
                f"paths.shared_data_dir={SHARED}",
                "paths.output_dir=" + str(root / "out"),
                *overrides,
            ],
        )


def decompose_only(items: Sequence[Any], backend: Any, settings: Any) -> Any:
    """Only the decompose stage: the same requests (and seeds) as the pipeline's first round, one call."""
    from causalneg.generation.backends.base import GenerationRequest
    from causalneg.generation.filters import parse_output
    from causalneg.generation.pipeline import PipelineResult
    from causalneg.generation.prompting import render_messages
    from causalneg.generation.schemas import Decomposition
    from causalneg.generation.store import derive_seed

    requests = [
        GenerationRequest(
            item.query_id,
            render_messages("decompose", item, settings.num_negatives),
            derive_seed(settings.seed, item.query_id, "decompose", 0),
        )
        for item in items
    ]
    outputs = backend.generate(requests, Decomposition, settings.stage_sampling("decompose", 0))
    reasons: Counter[str] = Counter()
    for output in outputs:
        _, verdict = parse_output(output, Decomposition)
        reasons[verdict.reason or "valid"] += 1
    valid = reasons.pop("valid", 0)
    counts = {
        "per_stage": {"decompose": {"requests": len(items), "valid": valid}},
        "validity_rate": valid / max(1, len(items)),
        "negatives_kept": 0,
        "negatives_rejected": 0,
        "kept_rate": 0.0,
        "rejections": dict(reasons),
    }
    return PipelineResult(rows=[], rejected=[], decompositions=[], counts=counts)


def kept_valid_share(result: Any, journal: Path, schema: Any) -> tuple[int, int]:
    """(kept negatives whose raw output re-validates against its stage schema, kept negatives)."""

    texts = {}
    for line in journal.read_text().splitlines() if journal.is_file() else []:
        record = json.loads(line)
        texts[record["key"]] = record["text"]
    ok = total = 0
    for row in result.rows:
        for negative in row["negatives"]:
            total += 1
            raw = texts.get(negative["request_key"])
            try:
                parsed = schema.model_validate_json(raw) if raw is not None else None
                ok += parsed is not None and any(n.text == negative["text"] for n in parsed.negatives)
            except ValueError:
                pass
    return ok, total


def run_backend(spec: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One backend over the same selected queries; returns timings, counts and load averages.

    ``spec`` is a backend name, optionally with options of its own after a colon, ``+``-separated
    (``llamacpp:parallel=6``), applied after the ``--*-option`` ones: one run can compare two settings.
    """
    name, _, own = spec.partition(":")
    import torch
    from omegaconf import OmegaConf

    from causalneg.config import plain_dict
    from causalneg.generation.backends.factory import build_backend
    from causalneg.generation.pipeline import run_pipeline
    from causalneg.generation.store import RequestStore
    from causalneg.stages.common import load_dataset
    from causalneg.stages.generate import build_embedder, build_inputs, filter_config, pipeline_settings
    from causalneg.stages.specs import generation_plan

    overrides = [
        f"generation={args.method}",
        f"generation.num_negatives={args.num_negatives}",
        *args.override,
    ]
    if name == "vllm":
        overrides += [f"generation.backend.{k}={v}" for k, v in (kv.split("=", 1) for kv in args.vllm_option)]
        overrides.append(f"generation.flush_every={args.n}")  # one batch per stage
    elif name == "llamacpp":
        options = (kv.split("=", 1) for kv in args.llamacpp_option)
        overrides += [f"generation.backend.{k}={v}" for k, v in options]
        overrides.append(f"generation.backend.n_threads={args.threads}")
        overrides.append(f"generation.flush_every={args.n}")  # one call per stage, batched up to `parallel`
    else:
        overrides.append(f"generation.flush_every={args.transformers_batch}")
        overrides.append(f"generation.backend.batch_size={args.transformers_batch}")
    overrides += [f"generation.backend.{kv}" for kv in own.split("+") if kv]
    cfg = compose(args.model, name, args.n, root, overrides)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(cfg)
    items = build_inputs(generation_plan(cfg, dataset), dataset)
    filters = filter_config(cfg, dataset)
    embed = build_embedder(cfg, filters)
    load_before = os.getloadavg()
    start = time.perf_counter()
    backend = TimedBackend(build_backend(plain_dict(cfg.generation)))
    startup = time.perf_counter() - start
    journal = root / f"journal-{spec.replace(':', '_').replace('=', '-').replace('+', '_')}.jsonl"
    try:
        if args.only_decompose:
            result = decompose_only(items, backend, pipeline_settings(cfg))
        else:
            result = run_pipeline(
                items, backend, RequestStore(journal), pipeline_settings(cfg), filters, embed
            )
    finally:
        backend.close()
    from causalneg.generation.schemas import naive_schema, perturbation_schema

    stage_schema = (naive_schema if args.method == "naive" else perturbation_schema)(args.num_negatives)
    ok, total = kept_valid_share(result, journal, stage_schema)
    return {
        "backend": spec,
        "engine": name,
        "options": OmegaConf.to_container(cfg.generation.backend, resolve=True),
        "startup_s": startup,
        "seconds": dict(backend.seconds),
        "requests": dict(backend.requests),
        "tokens": dict(backend.tokens),
        "errors": dict(backend.errors),
        "counts": result.counts,
        "kept_valid": [ok, total],
        "rejected_sample": [{k: v for k, v in r.items() if k != "raw"} for r in result.rejected[:20]],
        "load": [load_before, os.getloadavg()],
    }


def _rate(a: float, b: float) -> float:
    return a / b if b else float("nan")


def print_tables(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'backend':<13}{'stage':<11}{'requests':>9}{'wall s':>9}{'req/s':>8}{'out tok':>9}{'tok/s':>8}"
        f"{'valid':>8}"
    )
    print("\nThroughput (time inside backend.generate; engine start-up excluded)")
    print(header)
    for r in results:
        per_stage = r["counts"]["per_stage"]
        for stage in [*(x for x in STAGES if r["requests"].get(x)), "all"]:
            if stage == "all":
                req, sec, tok = (sum(r[k].values()) for k in ("requests", "seconds", "tokens"))
                valid = r["counts"]["validity_rate"]
            else:
                req, sec, tok = (
                    r["requests"].get(stage, 0),
                    r["seconds"].get(stage, 0.0),
                    r["tokens"].get(stage, 0),
                )
                s = per_stage.get(stage, {"requests": 0, "valid": 0})
                valid = _rate(s["valid"], s["requests"])
            print(
                f"{r['backend']:<13}{stage:<11}{req:>9}{sec:>9.1f}{_rate(req, sec):>8.3f}{tok:>9}"
                f"{_rate(tok, sec):>8.2f}{valid:>8.1%}"
            )
    print("\nFilters (negatives of the last stage)")
    print(f"{'backend':<13}{'kept':>6}{'rejected':>10}{'kept rate':>11}{'kept valid':>12}  rejections")
    for r in results:
        c, (ok, total) = r["counts"], r["kept_valid"]
        print(
            f"{r['backend']:<13}{c['negatives_kept']:>6}{c['negatives_rejected']:>10}{c['kept_rate']:>11.1%}"
            f"{f'{ok}/{total}':>12}  {c['rejections']}"
        )
    pairs = [
        (v, t)
        for first, second in RATIOS
        for v in results
        for t in results
        if v.get("engine", v["backend"]) == first and t.get("engine", t["backend"]) == second
    ]
    for v, t in pairs:
        print(f"\n{v['backend']} / {t['backend']}")
        for stage in [*(x for x in STAGES if v["requests"].get(x) and t["requests"].get(x)), "all"]:
            keys = [stage] if stage != "all" else list(STAGES)
            req = [sum(x["requests"].get(k, 0) for k in keys) for x in (v, t)]
            sec = [sum(x["seconds"].get(k, 0.0) for k in keys) for x in (v, t)]
            tok = [sum(x["tokens"].get(k, 0) for k in keys) for x in (v, t)]
            print(
                f"  {stage:<10} req/s x{_rate(_rate(req[0], sec[0]), _rate(req[1], sec[1])):.2f}   "
                f"tok/s x{_rate(_rate(tok[0], sec[0]), _rate(tok[1], sec[1])):.2f}"
            )
    print("\nEngine start-up and machine load (1/5/15-min load average before -> after; 2 cores)")
    for r in results:
        before, after = r["load"]
        print(
            f"  {r['backend']:<13} start-up {r['startup_s']:.1f} s; load "
            f"{'/'.join(f'{x:.1f}' for x in before)} -> {'/'.join(f'{x:.1f}' for x in after)}; "
            f"options {r['options']}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="smollm2",
        choices=["smollm2", "qwen_coder_0_5b", "qwen_coder_1_5b", "hf"],
        help="hf: any HF folder, given with --override generation.model.path=DIR",
    )
    parser.add_argument("--n", type=int, default=32, help="HotpotQA training queries (requests per stage)")
    parser.add_argument("--backends", default="vllm,transformers", help="comma-separated, run in this order")
    parser.add_argument(
        "--threads", type=int, default=1, help="cores per backend (torch threads / vLLM binding / n_threads)"
    )
    parser.add_argument("--method", default="causalneg", choices=["causalneg", "naive"])
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--only-decompose", action="store_true", help="run the decompose stage only")
    parser.add_argument("--transformers-batch", type=int, default=4)
    parser.add_argument("--vllm-option", action="append", default=[], help="KEY=VALUE for generation.backend")
    parser.add_argument(
        "--llamacpp-option", action="append", default=[], help="KEY=VALUE for generation.backend (llamacpp)"
    )
    parser.add_argument("--override", action="append", default=[], help="any extra Hydra override")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: a tiny random Llama built in-process (tests/tiny_generators.py), transformers backend, 2 queries",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault(
        "TORCHDYNAMO_DISABLE", "1"
    )  # outlines_core's torch.compile warm-up is not generation
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{args.threads - 1}" if args.threads > 1 else "0"
    if not SHARED.is_dir():
        raise SystemExit(f"shared data sets not found at {SHARED} (set CAUSALNEG_SHARED_DATA)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        if args.smoke:
            sys.path.insert(0, str(REPO))
            from tests.tiny_generators import build_tiny_llama

            tiny = build_tiny_llama(Path(tmp) / "tiny-llama", seed=0)
            args.model, args.backends, args.n, args.threads = "hf", "transformers", 2, 1
            args.transformers_batch = 2
            args.override = [
                *args.override,
                f"generation.model.path={tiny}",
                "generation.decompose.max_new_tokens=300",
                "generation.perturb.max_new_tokens=200",
            ]
        for name in args.backends.split(","):
            print(f"[bench] {name}: {args.n} queries, model {args.model} ...", file=sys.stderr, flush=True)
            results.append(run_backend(name, args, Path(tmp)))
            print_tables(results)  # after each backend: a long run shows its first half early
            if args.json is not None:
                args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
