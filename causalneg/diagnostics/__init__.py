"""Source-shortcut diagnostics (DESIGN §1c): mutual information, source probes, probability mass, plots.

The Lightning callback lives in :mod:`causalneg.diagnostics.callback` and plots in
:mod:`causalneg.diagnostics.plots`; neither is imported here, so the estimators load without Lightning or
matplotlib.
"""

from causalneg.diagnostics.mutual_information import mi_binned, mi_knn, permutation_baseline
from causalneg.diagnostics.probes import blind_probe_auc, probe_auc_blind, probe_auc_similarity
from causalneg.diagnostics.shortcut import ShortcutReport, shortcut_diagnostics

__all__ = [
    "ShortcutReport",
    "blind_probe_auc",
    "mi_binned",
    "mi_knn",
    "permutation_baseline",
    "probe_auc_blind",
    "probe_auc_similarity",
    "shortcut_diagnostics",
]
