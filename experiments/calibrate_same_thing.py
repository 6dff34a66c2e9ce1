"""Calibrate the grounded edits' same-thing check: the judge's P(yes) for synonyms against sibling terms.

    python experiments/calibrate_same_thing.py --threads 2      # writes experiments/grounded/same_thing.json
    python experiments/calibrate_same_thing.py --smoke          # CI: a tiny random Llama, 4 pairs, a temp file

The check (:data:`causalneg.generation.grounded.pipeline.SAME_THING`, ``verify.same_thing_threshold``) rejects a
substitute that the LLM calls another name of the span. Small generators propose synonyms ("T cells" ->
"T lymphocytes") that keep what the query asks for; the encoder cannot tell a synonym from a sibling term
(MiniLM cos infertility/sterility 0.445 against CDX2/CDX3 0.872), so the LLM is asked. This script scores
labelled pairs (1 = the same thing, 0 = a different thing of the same kind, taken from SciFact's kept and
rejected edits) with the study's generator, under the generic profile's system prompt, exactly as the pipeline
asks, and prints each pair's P(yes) and how many of each label a threshold rejects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAIRS = [  # (span, substitute, 1 = the same thing)
    ("T cells", "T lymphocytes", 1),
    ("infertility", "sterility", 1),
    ("heart attack", "myocardial infarction", 1),
    ("IL-18", "interleukin-18", 1),
    ("tumor", "neoplasm", 1),
    ("breast cancer", "malignancy", 1),
    ("elongation rate", "elongation speed", 1),
    ("CDX2", "CDX3", 0),
    ("caspase-11", "caspase-12", 0),
    ("beta-band", "alpha-band", 0),
    ("HNF4A", "HNF1B", 0),
    ("vitamin B6", "vitamin B12", 0),
    ("Egr3", "Egr4", 0),
    ("Chinese", "Hispanic Americans", 0),
    ("eczema", "psoriasis", 0),
    ("TRAF1/C5 region", "CD4", 0),
    ("oocyte", "sperm", 0),
    ("diabetes", "hypertension", 0),
    ("Rpl38", "Rpl43", 0),
    ("Rpl38", "Rpl20", 0),
    ("LMNA", "Laminin", 0),
    ("mice", "rats", 0),
    ("obesity", "anorexia", 0),
    ("CD8+ T cells", "B lymphocytes", 0),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="qwen_coder_1_5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", default="generic")
    parser.add_argument(
        "--json", type=Path, default=None, help="default: experiments/grounded/same_thing.json"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: a tiny random Llama (tests/tiny_generators.py) on the transformers backend, 4 pairs; writes "
        "--json only (default: a temporary file)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke(args)
    if args.json is None:
        args.json = REPO / "experiments" / "grounded" / "same_thing.json"

    from causalneg.generation.backends.llamacpp_backend import LlamaCppBackend
    from causalneg.generation.generator_models import resolve_gguf

    home = Path(os.environ.get("CAUSALNEG_HOME", ".")).resolve()  # as conf/paths/default.yaml
    gguf = resolve_gguf(args.model, home / ".cache" / "generators")
    backend = LlamaCppBackend(gguf.location, gguf.model_id, n_threads=args.threads)
    report(args, backend, pair_requests(args.profile, PAIRS), PAIRS, gguf.model_id)
    return 0


def pair_requests(profile: str, pairs: list[tuple[str, str, int]]) -> list[Any]:
    """One same-thing request per pair, under ``profile``'s system prompt, exactly as the pipeline asks."""
    from causalneg.generation.backends.base import GenerationRequest
    from causalneg.generation.grounded.pipeline import SAME_THING
    from causalneg.generation.prompting import load_profiles, render_template

    system = render_template("grounded_system", profile=load_profiles()[profile])
    return [
        GenerationRequest(
            f"pair{i}",
            [
                {"role": "system", "content": system},
                {"role": "user", "content": SAME_THING.format(span=a, substitute=b)},
            ],
            0,
        )
        for i, (a, b, _) in enumerate(pairs)
    ]


def smoke(args: argparse.Namespace) -> int:
    """The same scoring and report with a tiny random model: checks the path, not the calibration."""
    import tempfile

    from causalneg.generation.backends.transformers_backend import TransformersBackend
    from tests.tiny_generators import build_tiny_llama

    pairs = [*PAIRS[:2], *PAIRS[-2:]]
    with tempfile.TemporaryDirectory(prefix="same-thing-smoke-") as tmp:
        backend = TransformersBackend(str(build_tiny_llama(Path(tmp) / "tiny", seed=0)), "tiny-llama")
        requests = pair_requests(args.profile, pairs)
        if args.json is None:
            args.json = Path(tmp) / "same_thing.json"
        report(args, backend, requests, pairs, "tiny-llama")
    return 0


def report(
    args: argparse.Namespace,
    backend: Any,
    requests: list[Any],
    pairs: list[tuple[str, str, int]],
    model_id: str,
) -> None:
    """Score ``requests`` (one per pair), print each pair's P(yes) and each threshold's rejections, write JSON."""
    start = time.perf_counter()
    scores = backend.choice_probabilities(requests, ("yes", "no"))
    seconds = time.perf_counter() - start
    backend.close()
    rows: list[dict[str, Any]] = [
        {"span": a, "substitute": b, "same": same, "p_yes": round(p["yes"], 4)}
        for (a, b, same), p in zip(pairs, scores, strict=True)
    ]
    for row in sorted(rows, key=lambda r: -r["p_yes"]):
        print(
            f"{row['p_yes']:.3f}  {'same     ' if row['same'] else 'different'}  {row['span']} -> {row['substitute']}"
        )
    thresholds = {}
    for threshold in (0.5, 0.55, 0.6, 0.65, 0.7):
        same = sum(r["p_yes"] >= threshold for r in rows if r["same"])
        different = sum(r["p_yes"] >= threshold for r in rows if not r["same"])
        thresholds[str(threshold)] = {"same_rejected": same, "different_rejected": different}
        print(
            f"threshold {threshold}: rejects {same}/{sum(r['same'] for r in rows)} same, "
            f"{different}/{sum(not r['same'] for r in rows)} different"
        )
    args.json.write_text(
        json.dumps(
            {
                "model": model_id,
                "profile": args.profile,
                "seconds": round(seconds, 1),
                "pairs": rows,
                "thresholds": thresholds,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json} ({seconds:.0f} s)")


if __name__ == "__main__":
    raise SystemExit(main())
