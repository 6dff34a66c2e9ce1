"""Comparing runs tracked in MLflow.

- :mod:`causalneg.tracking.compare` -- pure statistics over :class:`RunRecord` objects (seeds, bootstrap,
  paired tests); :mod:`causalneg.tracking.render` -- markdown tables;
- :mod:`causalneg.tracking.mlflow_io` -- reading finished runs and logging the summary run;
- :mod:`causalneg.tracking.report` -- the whole comparison (used by ``stage=compare`` and the notebook).
Only the pure modules are imported here, so they load without MLflow.
"""

from causalneg.tracking.compare import (
    RunRecord,
    bootstrap_ci,
    paired_test,
    paired_tests,
    per_query_frame,
    pool_queries,
    runs_frame,
    summarize,
)
from causalneg.tracking.render import render_markdown

__all__ = [
    "RunRecord",
    "bootstrap_ci",
    "paired_test",
    "paired_tests",
    "per_query_frame",
    "pool_queries",
    "render_markdown",
    "runs_frame",
    "summarize",
]
