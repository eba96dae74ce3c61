"""Recovery of planted masks on simulated data (models.md §8.3).

Latent dimensions are identifiable only up to permutation, so learned dimensions are matched
one-to-one to true ones by the Hungarian algorithm on the co-occurrence of active entries.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score


def mask_stats(true_mask: np.ndarray, mask_prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Hungarian-matched precision, recall and F1 of ``mask_prob > threshold`` against the true
    (T x K_true) mask, and the AUROC of the matched probabilities against the true entries."""
    true_mask = np.asarray(true_mask) > 0
    mask_prob = np.asarray(mask_prob, dtype=float)
    hard = mask_prob > threshold
    # Match on probabilities rather than hard values so that a model with no active entry
    # still gets a meaningful assignment for the AUROC.
    cooccurrence = true_mask.T.astype(float) @ mask_prob
    rows, cols = linear_sum_assignment(cooccurrence, maximize=True)
    matched_hard = hard[:, cols]
    tp = float((true_mask[:, rows] & matched_hard).sum())
    n_hat, n_true = float(hard.sum()), float(true_mask.sum())
    truth = true_mask[:, rows].ravel()
    scores = mask_prob[:, cols].ravel()
    auroc = float(roc_auc_score(truth, scores)) if 0 < truth.sum() < truth.size else float("nan")
    return {
        "precision": tp / n_hat if n_hat else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "f1": 2 * tp / (n_hat + n_true) if n_hat + n_true else 0.0,
        "auroc": auroc,
        "density": float(hard.mean()),
        "assignment": cols.tolist(),
    }
