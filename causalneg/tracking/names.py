"""Metric names as MLflow stores them: MLflow forbids "@", so ``test/ndcg@10`` is kept as ``test/ndcg_at_10``.

Kept free of heavy imports so that ``stage=compare`` and the notebook load without torch or Lightning.
"""

from __future__ import annotations


def mlflow_metric_name(name: str) -> str:
    """``test/ndcg@10`` -> ``test/ndcg_at_10`` (MLflow allows only ``[/\\w.\\- :]`` in metric names)."""
    return name.replace("@", "_at_")


def metric_name_from_mlflow(name: str) -> str:
    """Inverse of :func:`mlflow_metric_name`."""
    return name.replace("_at_", "@")
