"""Entry point: ``python run.py [stage=train|evaluate|mine|generate|diagnose|compare] [+experiment=NAME] [k=v ...]``.

Composes ``conf/run.yaml`` and hands the config to ``causalneg.stages.<stage>.run``; nothing else lives here.
An error the user can fix (:class:`causalneg.errors.CausalNegError`: bad data, a missing or wrong config value)
prints one line ``error: <message>`` on stderr and exits with status 2; other exceptions keep their traceback
(``HYDRA_FULL_ERROR=1`` shows the traceback of user errors too).
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from causalneg.errors import CausalNegError
from causalneg.stages import dispatch


def user_error(exc: BaseException) -> CausalNegError | None:
    """The CausalNegError behind ``exc`` (itself, or the cause it wraps, e.g. in Hydra's InstantiationException)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CausalNegError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    try:
        result = dispatch(cfg)
    except Exception as exc:
        error = user_error(exc)
        if error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    # Returning the objective lets Hydra sweepers optimise it; plain runs ignore it.
    value = result.get("objective") if isinstance(result, dict) else None
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
