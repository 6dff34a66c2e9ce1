"""``stage=compare``: compare the arms of an MLflow experiment (tables, paired tests, plots, summary run).

    python run.py stage=compare [compare.experiment=NAME|latest] [compare.baseline_arm=mined_only]

Reads every FINISHED run of ``compare.experiment`` at ``logger.tracking_uri`` (summary runs excluded), writes
``summary.md``, ``summary.csv``, ``paired_tests.csv``, ``runs.csv``, ``ndcg_by_arm.png`` and
``shortcut_by_arm.png`` to ``<paths.output_dir>/compare``, logs them as artifacts of a new run tagged
``summary=true`` and prints the markdown table.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from causalneg.errors import ConfigError
from causalneg.tracking.mlflow_io import latest_experiment
from causalneg.tracking.report import CompareOptions, compare_experiment


def options_from_config(node: DictConfig) -> CompareOptions:
    """:class:`CompareOptions` from the ``compare`` config group."""
    metrics = OmegaConf.to_container(node.metrics, resolve=True) if node.get("metrics") is not None else None
    if not isinstance(metrics, list):
        raise ConfigError("compare.metrics must be a list of metric names")
    return CompareOptions(
        experiment=str(node.experiment),
        baseline_arm=str(node.get("baseline_arm", "mined_only")),
        metrics=tuple(str(m) for m in metrics),
        n_bootstrap=int(node.get("n_bootstrap", 1000)),
        seed=int(node.get("seed", 0)),
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Compare the experiment's arms; returns the markdown, written files and the summary run id."""
    for key in ("compare", "logger.tracking_uri", "paths.output_dir"):
        if OmegaConf.select(cfg, key, throw_on_missing=False) is None:
            raise ConfigError(f"stage=compare needs the config key {key}")
    missing = sorted(OmegaConf.missing_keys(cfg.compare))
    if missing:
        raise ConfigError(f"missing required config value(s): {', '.join('compare.' + k for k in missing)}")
    options = options_from_config(cfg.compare)
    if options.experiment == "latest":
        options = replace(options, experiment=latest_experiment(str(cfg.logger.tracking_uri)))
        print(f"[causalneg] compare.experiment=latest: comparing {options.experiment!r}", flush=True)
    out_dir = Path(str(cfg.paths.output_dir)) / "compare"
    result = compare_experiment(
        str(cfg.logger.tracking_uri),
        options,
        out_dir,
        log_summary=bool(cfg.compare.get("log_summary_run", True)),
    )
    print(result["markdown"], flush=True)
    print(
        f"[causalneg] comparison written to {out_dir} (summary run: {result['summary_run_id']})", flush=True
    )
    return result
