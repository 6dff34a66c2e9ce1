"""The generation hand-off: training that finds its generated negatives missing (``data.auto_generate=true``)
writes its resolved config to ``<output_dir>/generate.yaml`` with ``stage=generate`` and runs
``python -m causalneg.stages.handoff <that file>`` as a child process, which runs the generate stage on exactly
that config. Generation runs in its own process because vLLM does not free its memory in-process and Lightning
calls ``prepare_data`` after the strategy has started; the file records what the child was asked to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from causalneg.artifacts import atomic_write_text
from causalneg.errors import CausalNegError, ConfigError

CONFIG_FILE = "generate.yaml"


def write_generation_config(cfg: DictConfig, directory: Path) -> Path:
    """``cfg`` resolved (Hydra's own node left out), with ``stage=generate``, as ``directory/generate.yaml``."""
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    values = {k: v for k, v in values.items() if k != "hydra"}
    values["stage"] = "generate"
    path = directory / CONFIG_FILE
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(values)))
    return path


def generate_in_child_process(cfg: DictConfig) -> None:
    """Write the generation config and run the generate stage on it in a child process; wait for it."""
    path = write_generation_config(cfg, Path(str(cfg.paths.output_dir)))
    command = [sys.executable, "-m", "causalneg.stages.handoff", str(path)]
    print(f"[causalneg] generating negatives in a child process: {' '.join(command)}", flush=True)
    # The child imports this very checkout of causalneg (not whichever one the environment installs).
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    completed = subprocess.run(command, check=False, env=env)
    if completed.returncode != 0:
        raise ConfigError(
            f"generation child process failed with exit code {completed.returncode}: {' '.join(command)}"
        )


def main(argv: list[str]) -> int:
    """``python -m causalneg.stages.handoff CONFIG``: the generate stage on a written config (exit 2: user error)."""
    from causalneg.stages import dispatch

    if len(argv) != 1:
        print("usage: python -m causalneg.stages.handoff <generate.yaml>", file=sys.stderr)
        return 2
    cfg = OmegaConf.load(argv[0])
    assert isinstance(cfg, DictConfig)
    try:
        dispatch(cfg)
    except CausalNegError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
