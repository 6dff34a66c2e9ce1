"""Training objective: InfoNCE, the query-view entropy regularizer and their weighted sum (DESIGN §1b)."""

from causalneg.losses.distributed import all_gather_with_grad
from causalneg.losses.infonce import InfoNCE
from causalneg.losses.objective import (
    Objective,
    ObjectiveOutput,
    Regularizer,
    RegularizerOutput,
    build_objective,
    per_source_similarity_stats,
)
from causalneg.losses.query_view_entropy import QueryViewEntropy

__all__ = [
    "InfoNCE",
    "Objective",
    "ObjectiveOutput",
    "QueryViewEntropy",
    "Regularizer",
    "RegularizerOutput",
    "all_gather_with_grad",
    "build_objective",
    "per_source_similarity_stats",
]
