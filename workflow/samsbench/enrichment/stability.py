"""Do learned masks survive a second seed? (beyond the reference; issue 17)

Latent dimensions have no fixed order: two seeds may learn the same masks with their columns
permuted. Each measure therefore matches the columns of seed a to those of seed b with the
Hungarian algorithm before comparing (only permutations; a rotation of the latent space is not
undone, because a mask is tied to its axes):

* ``jaccard``: thresholded masks (q(m) > threshold), columns matched to maximise the number of
  shared active entries; |A and B| / |A or B| over all entries. 1 for a permuted copy; NaN when
  both masks are empty.
* ``entry_agreement``: the fraction of entries on which the matched thresholded masks agree (on
  or off); high for any two sparse masks, so read it beside ``jaccard``.
* ``q_correlation``: q(m) itself, columns matched to maximise the summed Pearson r of matched
  columns; the Pearson r of the two matched matrices, flattened. NaN when either is constant.

``seed_support`` marks the enrichment terms found (FDR at most alpha, in any latent dimension)
in at least k of a model's n seeds. Nothing here reads files or config; the step that does is
``samsbench.stages.stability``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

PAIR_COLUMNS = ["model", "split", "seed_a", "seed_b", "jaccard", "entry_agreement",
                "q_correlation", "active_a", "active_b", "n_perturbations", "n_latent"]
SUPPORT_COLUMNS = ["model", "split", "library", "term", "n_seeds_found", "n_seeds",
                   "min_seeds", "stable"]


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"masks must be equally shaped 2-D arrays, got {a.shape} and {b.shape}")
    return a, b


def match_thresholded(a, b, threshold: float = 0.5) -> np.ndarray:
    """Column order of b matched to a: maximises shared active entries (Hungarian)."""
    a, b = _check_pair(a, b)
    shared = (a > threshold).T.astype(float) @ (b > threshold).astype(float)
    _, cols = linear_sum_assignment(shared, maximize=True)
    return cols


def match_probabilities(a, b) -> np.ndarray:
    """Column order of b matched to a: maximises the summed Pearson r of matched columns."""
    a, b = _check_pair(a, b)
    ac, bc = a - a.mean(0), b - b.mean(0)
    na, nb = np.linalg.norm(ac, axis=0), np.linalg.norm(bc, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac.T @ bc) / np.outer(na, nb)
    _, cols = linear_sum_assignment(np.nan_to_num(r, nan=0.0), maximize=True)
    return cols


def jaccard(a, b, threshold: float = 0.5) -> float:
    a, b = _check_pair(a, b)
    ha, hb = a > threshold, (b > threshold)[:, match_thresholded(a, b, threshold)]
    union = np.logical_or(ha, hb).sum()
    return float(np.logical_and(ha, hb).sum() / union) if union else math.nan


def entry_agreement(a, b, threshold: float = 0.5) -> float:
    a, b = _check_pair(a, b)
    ha, hb = a > threshold, (b > threshold)[:, match_thresholded(a, b, threshold)]
    return float(np.mean(ha == hb))


def q_correlation(a, b) -> float:
    a, b = _check_pair(a, b)
    x, y = a.ravel(), b[:, match_probabilities(a, b)].ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def is_masked(mask_prob) -> bool:
    """A learned mask: present and not fixed (the mask-off ablation's all-ones is not)."""
    if mask_prob is None:
        return False
    values = np.asarray(mask_prob, dtype=float)
    return values.size > 0 and not np.all(values == 1.0)


def pair_table(masks: dict[tuple[str, str, int], pd.DataFrame],
               threshold: float = 0.5) -> pd.DataFrame:
    """One row per (model, split) and pair of its seeds, from {(model, split, seed): q(m)}.

    q(m) frames are perturbations x latent dims; rows are aligned on the perturbations the two
    seeds share. Models with one seed give no row.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for model, split, seed in masks:
        groups.setdefault((model, split), []).append(seed)
    rows = []
    for (model, split), seeds in sorted(groups.items()):
        for sa, sb in itertools.combinations(sorted(seeds), 2):
            fa, fb = masks[(model, split, sa)], masks[(model, split, sb)]
            shared = fa.index.intersection(fb.index)
            a, b = fa.loc[shared].to_numpy(float), fb.loc[shared].to_numpy(float)
            rows.append({
                "model": model, "split": split, "seed_a": sa, "seed_b": sb,
                "jaccard": jaccard(a, b, threshold),
                "entry_agreement": entry_agreement(a, b, threshold),
                "q_correlation": q_correlation(a, b),
                "active_a": float(np.mean(a > threshold)),
                "active_b": float(np.mean(b > threshold)),
                "n_perturbations": len(shared), "n_latent": a.shape[1],
            })
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def default_min_seeds(n_seeds: int) -> int:
    """A majority of the seeds (2 of 3, 3 of 4 or 5)."""
    return n_seeds // 2 + 1


def seed_support(enrichment: pd.DataFrame, seeds: dict[tuple[str, str], list[int]],
                 alpha: float = 0.05, min_seeds: int | None = None) -> pd.DataFrame:
    """Per (model, split, library, term) significant in some seed: in how many of the n seeds
    of that model and split (``seeds``) it is significant, and whether that is at least k
    (``min_seeds``, default a majority of n)."""
    hits = enrichment[enrichment["fdr"] <= alpha]
    found = (hits.groupby(["model", "split", "library", "term"])["seed"].nunique()
             .rename("n_seeds_found").reset_index())
    if found.empty:
        return pd.DataFrame(columns=SUPPORT_COLUMNS)
    found["n_seeds"] = [len(seeds.get((m, s), [])) for m, s in zip(found["model"], found["split"])]
    if (found["n_seeds"] < found["n_seeds_found"]).any():
        raise ValueError("enrichment rows name seeds that the run list does not have")
    found["min_seeds"] = [min_seeds if min_seeds is not None else default_min_seeds(n)
                          for n in found["n_seeds"]]
    found["stable"] = found["n_seeds_found"] >= found["min_seeds"]
    return found.sort_values(["model", "split", "stable", "n_seeds_found", "library", "term"],
                             ascending=[True, True, False, False, True, True],
                             kind="stable")[SUPPORT_COLUMNS].reset_index(drop=True)
