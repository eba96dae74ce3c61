"""``train_mean``: every perturbation gets the mean effect of the training perturbations.

The field's "does the model know anything perturbation-specific?" baseline (Systema, the
Virtual Cell Challenge): the prediction for any perturbation t is the training control mean
plus the average, over the non-control labels with training cells, of (label mean - control
mean), all in mean log2(CP10k+1). The control itself is predicted as the control mean. No
hyperparameters beyond ``encoding``.
"""

from __future__ import annotations

import numpy as np

from samsbench.models.base import MeanEffectModel


class TrainMean(MeanEffectModel):
    family = "train_mean"
    label = "Training mean"
    colour = "#666666"
    control: np.ndarray | None = None
    effect: np.ndarray | None = None
    control_label: str | None = None

    def fit(self, data) -> None:
        means = data.label_means("train")
        if data.control not in means:
            raise ValueError("train_mean needs control cells in the training split")
        perturbed = [label for label in sorted(means) if label != data.control]
        if not perturbed:
            raise ValueError("train_mean needs at least one perturbation with training cells")
        self.control = means[data.control]
        # Each training perturbation counts once, whatever its number of cells.
        self.effect = np.mean([means[label] - self.control for label in perturbed], axis=0)
        self.control_label = data.control

    def predict_means(self, labels):
        out = np.tile(self.control + self.effect, (len(labels), 1))
        for row, label in enumerate(labels):
            if label == self.control_label:
                out[row] = self.control
        return out

    def state(self):
        # The control label is a string; keep it as a key so the state stays arrays only.
        return {"control": self.control, "effect": self.effect,
                "control_label": {self.control_label: np.zeros(1)}}

    def load_state(self, state):
        self.control = np.asarray(state["control"])
        self.effect = np.asarray(state["effect"])
        self.control_label = next(iter(state["control_label"]))
