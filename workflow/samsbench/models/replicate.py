"""``replicate``: the ceiling, what a model that knew the true effects would score.

Every perturbation's cells in each split (the control's included) are split in two halves by a
seed made of the run seed and the hyperparameter ``replicate_seed`` (default 0), so that each
seed of an experiment draws another halving. ``scored_cells()`` lists half B; the evaluation
writes it to the predictions' ``uns["truth_cells"]``, and ``stages.evaluate.score_predictions``
then scores the data ATE of half A against that of half B, subset by subset on the held-out
cells (``ceiling.ceiling_metrics``): the ``split_half_*`` rows as measured, and the ceiling
itself under each metric's name (the attenuation bound for correlations, the truth's noise
variance for R2 and RMSE). The mean of half A is also this model's prediction (the cell-eval
export uses it). A label with a single cell in a split cannot be split there: its cell is in
half B and that label has no ceiling in that split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from samsbench.models.base import MeanEffectModel
from samsbench.models.hparams import Hyperparameters


@dataclasses.dataclass(frozen=True)
class ReplicateHyperparameters(Hyperparameters):
    """``replicate_seed``: with the run seed, the seed of the split of each perturbation's
    cells into halves."""

    replicate_seed: int = 0


def split_halves(labels: np.ndarray, seed, strata=None) -> np.ndarray:
    """Boolean per cell: True for the predicting half. Per label (and per stratum, e.g. the
    cell's split, when given), a random floor(n/2) cells (fixed seed, groups in sorted order so
    the draw does not depend on the cell order). ``seed``: an int or a sequence of ints."""
    labels = np.asarray(labels).astype(str)
    if strata is not None:
        labels = np.char.add(np.char.add(np.asarray(strata).astype(str), "\x1f"), labels)
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
        # the run seed (stages.train seeds torch before building a model): each seed of an
        # experiment is another halving, so the spread over seeds is the ceiling's own noise
        self.run_seed = int(torch.initial_seed())
        self.means: dict[str, np.ndarray] = {}
        self.truth_rows = None
        self.control_label = None

    def fit(self, data) -> None:
        predicting = split_halves(data.labels, [self.seed, self.run_seed], data.split)
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
                "run_seed": np.asarray([self.run_seed]),
                "control_label": {self.control_label: np.zeros(1)}}

    def load_state(self, state):
        self.means = {k: np.asarray(v) for k, v in state["means"].items()}
        self.truth_rows = np.asarray(state["truth_rows"], dtype=np.int64)
        self.control_label = next(iter(state["control_label"]))
        self.run_seed = int(np.asarray(state.get("run_seed", [0])).ravel()[0])
