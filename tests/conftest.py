"""Shared fixtures: the ../shared/data location, a tiny BEIR folder, and composed configs on tiny inputs."""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from hypothesis import settings

# No example database: tests leave no files behind (hypothesis would write .hypothesis/ into the cwd).
settings.register_profile("causalneg", database=None)
settings.load_profile("causalneg")

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CAUSALNEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
CONF_DIR = REPO_ROOT / "conf"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data, or skip: a fresh clone elsewhere has no shared data sets."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data sets not found at {SHARED_DATA} (set CAUSALNEG_SHARED_DATA to their folder)"
        )
    return SHARED_DATA


TOPICS = {
    "volcano": ["lava", "magma", "eruption", "crater", "ash", "basalt"],
    "violin": ["bow", "strings", "concerto", "luthier", "rosin", "sonata"],
    "glacier": ["ice", "moraine", "crevasse", "firn", "meltwater", "fjord"],
    "bakery": ["dough", "yeast", "oven", "croissant", "flour", "sourdough"],
    "satellite": ["orbit", "antenna", "launch", "telemetry", "payload", "apogee"],
    "chess": ["bishop", "gambit", "endgame", "rook", "checkmate", "opening"],
    "coral": ["reef", "polyp", "bleaching", "lagoon", "algae", "atoll"],
    "railway": ["locomotive", "gauge", "station", "freight", "signal", "viaduct"],
}
FILLER = ["the", "a", "of", "with", "and", "in", "its", "this", "is", "near", "about", "for"]


def write_tiny_beir(root: Path, seed: int = 0, per_topic: int = 8) -> Path:
    """A small BEIR folder whose relevance is learnable: each query names a topic and two of its terms.

    Passages: ``per_topic`` per topic; queries: one per passage, its positive is that passage; splits by
    passage index (train 0..4, dev 5, test 6..7 of each topic).
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], {"train": [], "dev": [], "test": []}
    for topic, terms in TOPICS.items():
        for i in range(per_topic):
            pid, qid = f"{topic}-{i}", f"q-{topic}-{i}"
            key = rng.sample(terms, 2)
            words = [*key, *rng.choices(terms, k=4), *rng.choices(FILLER, k=6)]
            rng.shuffle(words)
            corpus.append({"_id": pid, "title": f"{topic} {key[0]}", "text": " ".join(words) + f" {key[1]}"})
            queries.append({"_id": qid, "text": f"what about {topic} {key[0]} {key[1]}"})
            split = "train" if i < per_topic - 3 else ("dev" if i == per_topic - 3 else "test")
            qrels[split].append((qid, pid))
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir(exist_ok=True)
    for split, pairs in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{p}\t1" for q, p in pairs]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    return write_tiny_beir(tmp_path / "tiny_beir")


def tiny_overrides(tmp_path: Path, beir_dir: Path) -> list[str]:
    """Overrides that run the whole train path in seconds: tiny random encoder, tiny data, local stores."""
    return [
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        "dataset=beir",
        f"dataset.path={beir_dir}",
        "dataset.name=tiny",
        "dataset.dev_split=dev",
        "model=tiny",
        "data.batch_size=8",
        "data.num_mined=3",
        "data.diagnostics_groups=4",
        "eval.batch_size=32",
        "eval.dev_subcorpus_random=10",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "runtime.num_threads=1",
    ]


@pytest.fixture
def compose_cfg() -> Iterator[Callable[..., object]]:
    """Compose conf/run.yaml with overrides, as `python run.py` would (without Hydra's run directory)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import causalneg.config  # noqa: F401  (registers resolvers)

    def _compose(overrides: list[str], return_hydra_config: bool = False) -> object:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="run", overrides=overrides, return_hydra_config=return_hydra_config)

    yield _compose
    GlobalHydra.instance().clear()


def send_truncated_response(handler: BaseHTTPRequestHandler) -> None:
    """An HTTP 200 that promises 1,000 bytes, sends the start of a JSON body, then closes the connection: the
    "server died mid-response" fault of the OpenAI-compatible backend tests."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"choices": [')
    handler.wfile.flush()
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)
