"""A toy baseline added through the plug-in contract alone (used by tests/test_workflow.py)."""

import numpy as np

from samsbench.models.base import MeanEffectModel


class HalfShift(MeanEffectModel):
    """Predicts half of each perturbation's observed mean shift on the training cells."""

    family = "half_shift"

    def fit(self, data):
        self.means = data.label_means("train")
        self.control = self.means[data.control]

    def predict_means(self, labels):
        return np.array([self.control + 0.5 * (self.means.get(l, self.control) - self.control)
                         for l in labels])

    def state(self):
        return {"control": self.control, "means": self.means}

    def load_state(self, state):
        self.control, self.means = state["control"], state["means"]
