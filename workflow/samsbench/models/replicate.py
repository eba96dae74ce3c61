"""``replicate``: the split-half ceiling, how good a perfect model could look given the noise.

Every perturbation's cells (the control's included) are split in two halves by a fixed seed
(hyperparameter ``replicate_seed``, default 0; independent of the training seed). The mean of one half is the
prediction; the scorer compares it with the OTHER half only: ``scored_cells()`` lists that
half, the evaluation writes it to the predictions' ``uns["truth_cells"]``, and
``stages.evaluate.score_predictions`` then computes the data ATE on those cells alone (never on all cells, which
would include the predicting half). A label with a single cell cannot be split: its cell is
scored and the control mean is its prediction.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from samsbench.models.base import MeanEffectModel
from samsbench.models.hparams import Hyperparameters


@dataclasses.dataclass(frozen=True)
class ReplicateHyperparameters(Hyperparameters):
    """``replicate_seed``: the seed of the split of each perturbation's cells into halves."""

    replicate_seed: int = 0


def split_halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """Boolean per cell: True for the predicting half. Per label, a random floor(n/2) cells
    (fixed seed, labels in sorted order so the draw does not depend on the cell order)."""
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    predicting = np.zeros(len(labels), dtype=bool)
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        predicting[rng.permutation(rows)[: len(rows) // 2]] = True
    return predicting


class Replicate(MeanEffectModel):
    family = "replicate"
    label = "Replicate (split-half)"
    colour = "#222222"
    role = "ceiling"  # the normalised scores' 1, not a contender
    Hyperparameters = ReplicateHyperparameters

    def __init__(self, n_genes, perturbations, hparams=None):
        super().__init__(n_genes, perturbations, hparams)
        self.seed = self.hparams.replicate_seed
        if self.seed < 0:
            raise ValueError(f"replicate_seed must be >= 0, got {self.seed}")
        self.means: dict[str, np.ndarray] = {}
        self.truth_rows = None
        self.control_label = None

    def fit(self, data) -> None:
        predicting = split_halves(data.labels, self.seed)
        if data.control not in set(data.labels[predicting]):
            raise ValueError("replicate needs at least two control cells")
        self.means = data.label_means(rows=np.flatnonzero(predicting))
        self.truth_rows = np.flatnonzero(~predicting)
        self.control_label = data.control

    def predict_means(self, labels):
        control = self.means[self.control_label]
        return np.stack([self.means.get(label, control) for label in labels])

    def scored_cells(self, cell_ids) -> list[str]:
        """The ids of the cells the predictions must be scored against (the other half)."""
        return [str(c) for c in np.asarray(cell_ids)[self.truth_rows]]

    def state(self):
        return {"means": self.means, "truth_rows": self.truth_rows,
                "control_label": {self.control_label: np.zeros(1)}}

    def load_state(self, state):
        self.means = {k: np.asarray(v) for k, v in state["means"].items()}
        self.truth_rows = np.asarray(state["truth_rows"], dtype=np.int64)
        self.control_label = next(iter(state["control_label"]))
