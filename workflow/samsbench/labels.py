"""Perturbation labels: a combination joins its single perturbations with ``+``.

Pure string rules shared by the data contract and the models (no files, no AnnData).
"""

from __future__ import annotations

COMBINATION_SEP = "+"


def components(label: str) -> list[str]:
    """Split a perturbation label into its single perturbations (``A+B`` -> ``[A, B]``)."""
    return label.split(COMBINATION_SEP)
