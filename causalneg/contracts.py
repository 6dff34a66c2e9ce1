"""Definitions that the training objective and the diagnostics share, so that the two cannot drift apart.

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

TAU_ENT = 0.1
GENERATED_SOURCES: tuple[NegativeSource, ...] = (NegativeSource.GENERATED, NegativeSource.NAIVE_GENERATED)
MINED_SOURCES: tuple[NegativeSource, ...] = (NegativeSource.MINED,)
