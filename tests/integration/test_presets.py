"""Every experiment preset composes, every ablation arm smoke-runs on tiny data, and the ablation sweep launches
itself as a multirun that leaves one MLflow run per arm and seed in one experiment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from omegaconf import DictConfig

from causalneg.artifacts import Manifest, write_artifact
from causalneg.data.selection import select_query_ids
from causalneg.stages import dispatch
from causalneg.stages.common import load_dataset
from causalneg.stages.specs import generation_plan
from tests.conftest import CONF_DIR, REPO_ROOT, tiny_overrides

ARMS = (
    "mined_only",
    "random_negatives",
    "naive_llm",
    "causalneg_no_entropy",
    "causalneg",
    "grounded_no_entropy",
    "grounded",
)
SWEEPS = ("ablation_entropy", "ablation_entropy_weight")
ARM = "experiment@_global_"  # the arm's own entry in the defaults (run.yaml); `+experiment=ARM` adds one


def write_generated_fixture(cfg: DictConfig) -> Path:
    """A generated-negatives artifact where the LLM would put it, written by hand: this tests training on such
    an artifact, not generation (tests/integration/test_generation_pipeline.py covers that)."""
    dataset = load_dataset(cfg)
    split = dataset.split(str(cfg.dataset.train_split))
    source = str(cfg.generation.source)
    rows = []
    for qid in select_query_ids(split, cfg.data.max_train_queries, int(cfg.data.selection_seed)):
        topic = qid.split("-")[1]
        texts = [
            f"{topic} story number {i}: a plausible passage that misses one requirement" for i in range(3)
        ]
        rows.append(
            {
                "query_id": qid,
                "positive_id": split.positives(qid)[0],
                "negatives": [{"text": t, "source": source, "node_id": "n1"} for t in texts],
            }
        )
    directory = generation_plan(cfg, dataset).directory
    write_artifact(directory, rows, Manifest.build("generated", {"test": True}, {"fixture": True}))
    return directory


@pytest.mark.integration
@pytest.mark.parametrize("preset", ARMS + SWEEPS)
def test_every_preset_composes(preset: str, tmp_path: Path, tiny_beir: Path, compose_cfg) -> None:
    cfg = compose_cfg(
        [*tiny_overrides(tmp_path, tiny_beir), f"+experiment={preset}"], return_hydra_config=True
    )
    assert (CONF_DIR / "experiment" / f"{preset}.yaml").is_file() and not (CONF_DIR / "arms").exists()
    if preset in SWEEPS:
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        assert "seed" in cfg.hydra.sweeper.params
    else:
        assert cfg.arm == preset
    if preset == "causalneg":
        assert cfg.regularizer.query_view_entropy.weight == pytest.approx(0.05)
    if preset == "naive_llm":
        assert cfg.generation.source == "naive_generated"
    if preset.startswith("grounded"):
        assert cfg.generation.method == "grounded" and cfg.data.num_generated == 3
        assert ("query_view_entropy" in (cfg.get("regularizer") or {})) == (preset == "grounded")


@pytest.mark.integration
def test_ablation_entropy_runs_the_grounded_method_with_the_local_generator(compose_cfg) -> None:
    """The headline command's CausalNeg arms are the grounded edits with Qwen2.5-Coder-1.5B on llama.cpp, on
    HotpotQA (grounded edits need query-named spans in the positive); each method gets the grammar it needs."""
    cfg = compose_cfg(["+experiment=ablation_entropy"], return_hydra_config=True)
    arms = str(cfg.hydra.sweeper.params["experiment@_global_"]).split(",")
    assert arms == ["mined_only", "naive_llm", "grounded_no_entropy", "grounded"]
    assert cfg.dataset.name == "hotpotqa" and cfg.data.auto_generate
    for arm, method, grammar in (("grounded", "grounded", "llama_cpp"), ("naive_llm", "naive", "outlines")):
        arm_cfg = compose_cfg(["+experiment=ablation_entropy", f"{ARM}={arm}"])
        assert arm_cfg.generation.method == method and arm_cfg.generation.backend.name == "llamacpp"
        assert arm_cfg.generation.backend.grammar == grammar
        assert arm_cfg.generation.model.name == "qwen_coder_1_5b"


@pytest.mark.slow
def test_every_arm_smoke_runs_on_tiny_data(tmp_path: Path, tiny_beir: Path, compose_cfg) -> None:
    results = {}
    for arm in ARMS:
        overrides = [
            *tiny_overrides(tmp_path, tiny_beir),
            f"paths.output_dir={tmp_path / arm}",
            f"+experiment={arm}",
            "trainer.max_steps=2",
            f"diagnostics.enabled={'true' if arm == 'causalneg' else 'false'}",
        ]
        cfg = compose_cfg(overrides)
        if cfg.data.num_generated:
            write_generated_fixture(cfg)
        results[arm] = dispatch(cfg)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for arm, result in results.items():
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["arm"] == arm
        assert "test/ndcg_at_10" in run.data.metrics
    entropy_run = client.get_run(results["causalneg"]["run_id"])
    assert "loss/reg/query_view_entropy" in entropy_run.data.metrics
    assert "diag/mi_knn" in entropy_run.data.metrics
    assert "train/sim/generated" in entropy_run.data.metrics
    assert {"train_epoch/sim/generated", "train_epoch/margin/mined"} <= set(entropy_run.data.metrics)


@pytest.mark.slow
def test_ablation_sweep_launches_itself(tmp_path: Path, tiny_beir: Path, compose_cfg) -> None:
    overrides = [o for o in tiny_overrides(tmp_path, tiny_beir) if not o.startswith("paths.output_dir")]
    for arm in ("naive_llm", "causalneg"):  # the arms that need generated negatives, pre-written
        # composed through the sweep preset itself, so the fixture lands where its runs look (same fingerprint)
        write_generated_fixture(compose_cfg([*overrides, "+experiment=ablation_entropy", f"{ARM}={arm}"]))
    command = [
        sys.executable,
        str(REPO_ROOT / "run.py"),
        "+experiment=ablation_entropy",
        *overrides,
        "trainer.max_steps=1",
        "diagnostics.enabled=false",
        f"{ARM}=mined_only,naive_llm,causalneg",  # command-line sweeps take precedence over the preset's
        "seed=0",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("ablation_entropy-tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["arm"] for r in runs) == ["causalneg", "mined_only", "naive_llm"]
    assert all(r.info.status == "FINISHED" for r in runs)
