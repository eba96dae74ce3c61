"""Perturbation labels: a combination joins its single perturbations with ``+``.

Pure string rules shared by the data contract, the models and the metrics (no files; an
AnnData only for its ``uns`` entry naming the control).
"""

from __future__ import annotations

COMBINATION_SEP = "+"
PERTURBATION_KEY = "perturbation"  # the obs column of the labels
DEFAULT_CONTROL = "non-targeting"


def control_label(adata) -> str:
    """The dataset's control label (``uns["control_label"]``, else the default)."""
    return str(adata.uns.get("control_label", DEFAULT_CONTROL))


def components(label: str) -> list[str]:
    """Split a perturbation label into its single perturbations (``A+B`` -> ``[A, B]``)."""
    return label.split(COMBINATION_SEP)
