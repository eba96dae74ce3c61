"""Baselines without a likelihood: they predict mean log2(CP10k+1) expression directly.

``control_mean``: no perturbation has an effect. ``additive_mean``: each single perturbation
shifts the control mean by its mean shift on the training cells; a combination is the sum of
its singles' shifts (a single never seen in training has no shift). Neither has
hyperparameters beyond ``encoding``; their state is set by ``fit``.
"""

from __future__ import annotations

import numpy as np

from samsbench.labels import components
from samsbench.models.base import MeanEffectModel


class ControlMean(MeanEffectModel):
    family = "control_mean"
    label = "Control mean"
    colour = "#999999"
    control: np.ndarray | None = None

    def fit(self, data) -> None:
        means = data.label_means("train")
        if data.control not in means:
            raise ValueError("control_mean needs control cells in the training split")
        self.control = means[data.control]

    def predict_means(self, labels):
        return np.tile(self.control, (len(labels), 1))

    def state(self):
        return {"control": self.control}

    def load_state(self, state):
        self.control = np.asarray(state["control"])


class AdditiveMean(ControlMean):
    family = "additive_mean"
    label = "Additive mean"
    colour = "#a6761d"

    def fit(self, data) -> None:
        super().fit(data)
        means = data.label_means("train")
        self.shifts = {
            label: mean - self.control
            for label, mean in means.items()
            if label != data.control and len(components(label)) == 1
        }

    def predict_means(self, labels):
        out = np.tile(self.control, (len(labels), 1))
        for row, label in enumerate(labels):
            for part in components(label):
                if part in self.shifts:
                    out[row] += self.shifts[part]
        return out

    def state(self):
        return {"control": self.control, "shifts": self.shifts}

    def load_state(self, state):
        self.control = np.asarray(state["control"])
        self.shifts = {k: np.asarray(v) for k, v in state["shifts"].items()}
