"""Definitions that training, evaluation, the diagnostics and the reports share, so that they cannot drift apart.

- :data:`METRICS` -- the retrieval metrics every evaluation computes, validation logs (``val/<name>``) and the
  stages report; :data:`PRIMARY_METRIC` (with :data:`PRIMARY_MODE`: higher is better) selects the best checkpoint
  (``val/ndcg@10``), is a sweep's objective and the comparison's headline (``test/ndcg@10``);
  :data:`PER_QUERY_METRICS` are kept per query for the paired comparisons.

- :data:`TAU_ENT` -- τ_ent, the temperature of the query-view softmax (DESIGN §1b; the reference code's 0.1).
  The default of :class:`causalneg.losses.QueryViewEntropy`, of
  :func:`causalneg.diagnostics.shortcut.shortcut_diagnostics` and of the diagnostics callback, and the value
  both config groups (``regularizer/query_view_entropy.yaml``, ``diagnostics/default.yaml``) must hold (a
  test checks them).
- :data:`GENERATED_SOURCES` -- the sources that form G (LLM-written negatives).
- :data:`MINED_SOURCES` -- the sources that form M (hard negatives from the corpus). Random and in-batch
  negatives belong to neither: they are far easier than either kind, so counting them would lower the
  expected share ``Ng / (Nm + Ng)`` below what a source-blind query gives its generated negatives.

The generated probability mass itself is defined once, in
:func:`causalneg.losses.query_view_entropy.query_view_terms`, which both the regularizer and the diagnostics
call.
"""

from __future__ import annotations

from causalneg.records import NegativeSource

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
PRIMARY_METRIC = "ndcg@10"
PRIMARY_MODE = "max"
PER_QUERY_METRICS = ("ndcg@10", "recall@100", "mrr@10")

TAU_ENT = 0.1
GENERATED_SOURCES: tuple[NegativeSource, ...] = tuple(s for s in NegativeSource if s.is_generated)
MINED_SOURCES: tuple[NegativeSource, ...] = (NegativeSource.MINED,)
