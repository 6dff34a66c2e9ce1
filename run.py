"""Entry point: ``python run.py [stage=train|evaluate|mine|generate|diagnose|compare] [+experiment=NAME] [k=v ...]``.

Composes ``conf/run.yaml`` and hands the config to ``causalneg.stages.<stage>.run``; nothing else lives here.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from causalneg.stages import dispatch


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    result = dispatch(cfg)
    # Returning the objective lets Hydra sweepers optimise it; plain runs ignore it.
    value = result.get("objective") if isinstance(result, dict) else None
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
