"""``linear``: the field's linear perturbation model (PCA of training effects + ridge).

Ahlmann-Eltze, Huber & Anders, "Deep-learning-based gene perturbation effect prediction does
not yet outperform simple linear baselines" (Nature Methods 2025; bioRxiv 2024). With Y the
genes x training-perturbations matrix of mean expression and b its row means, the model is

    Y ≈ G W Pᵀ + b,   W = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹,

where G (genes x K) and P (perturbations x K) are the top-K principal components of the
training data (gene loadings and perturbation scores of Y − b). The defaults are the
published ones: ``linear_pca_dim: 10`` (K) and ``linear_ridge_penalty: 0.1`` (λ), the
defaults of their ``run_linear_pretrained_model`` script.

Here Y holds the single perturbations with training cells (mean log2(CP10k+1) minus the
training control mean, which only shifts b). A combination is additive in the embedding: its
P row is the sum of its singles' rows; a single without training cells has a zero row, so it
is predicted as b (the training-perturbation mean).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from samsbench.labels import components
from samsbench.models.base import MeanEffectModel
from samsbench.models.hparams import Hyperparameters


@dataclasses.dataclass(frozen=True)
class LinearHyperparameters(Hyperparameters):
    """The published defaults: PCA rank K = 10 and ridge penalty λ = 0.1."""

    linear_pca_dim: int = 10
    linear_ridge_penalty: float = 0.1


def fit_linear(Y: np.ndarray, pca_dim: int, ridge: float):
    """Fit on Y (perturbations x genes); returns (b, G, W, P) with Y ≈ P Wᵀ Gᵀ + b."""
    b = Y.mean(axis=0)
    centred = Y - b
    U, S, Vt = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(int(pca_dim), len(S)))
    G = Vt[:k].T  # genes x k
    P = U[:, :k] * S[:k]  # perturbations x k
    eye = np.eye(k)
    left = np.linalg.solve(G.T @ G + ridge * eye, G.T @ centred.T)  # k x perts
    W = np.linalg.solve((P.T @ P + ridge * eye).T, (left @ P).T).T  # = left P (PᵀP+λI)⁻¹
    return b, G, W, P


class LinearModel(MeanEffectModel):
    family = "linear"
    label = "Linear (PCA + ridge)"
    colour = "#e6ab02"
    Hyperparameters = LinearHyperparameters

    def __init__(self, n_genes, perturbations, hparams=None):
        super().__init__(n_genes, perturbations, hparams)
        self.pca_dim = self.hparams.linear_pca_dim
        self.ridge = self.hparams.linear_ridge_penalty
        if self.pca_dim < 1:
            raise ValueError(f"linear_pca_dim must be >= 1, got {self.pca_dim}")
        if self.ridge < 0:
            raise ValueError(f"linear_ridge_penalty must be >= 0, got {self.ridge}")
        self.control = None
        self.b = self.G = self.W = None
        self.embedding: dict[str, np.ndarray] = {}
        self.control_label = None

    def fit(self, data) -> None:
        means = data.label_means("train")
        if data.control not in means:
            raise ValueError("linear needs control cells in the training split")
        singles = sorted(label for label in means
                         if label != data.control and len(components(label)) == 1)
        if not singles:
            raise ValueError("linear needs single perturbations with training cells")
        self.control = means[data.control]
        Y = np.stack([means[label] - self.control for label in singles])
        self.b, self.G, self.W, P = fit_linear(Y, self.pca_dim, self.ridge)
        self.embedding = {label: P[i] for i, label in enumerate(singles)}
        self.control_label = data.control

    def predict_means(self, labels):
        k = self.W.shape[1]
        out = np.empty((len(labels), len(self.control)))
        for row, label in enumerate(labels):
            if label == self.control_label:
                out[row] = self.control
                continue
            p = sum((self.embedding.get(part, np.zeros(k)) for part in components(label)),
                    np.zeros(k))
            out[row] = self.control + self.b + self.G @ (self.W @ p)
        return out

    def state(self):
        return {"control": self.control, "b": self.b, "G": self.G, "W": self.W,
                "embedding": self.embedding, "control_label": {self.control_label: np.zeros(1)}}

    def load_state(self, state):
        self.control = np.asarray(state["control"])
        self.b, self.G, self.W = (np.asarray(state[k]) for k in ("b", "G", "W"))
        self.embedding = {k: np.asarray(v) for k, v in state["embedding"].items()}
        self.control_label = next(iter(state["control_label"]))
