"""Mask recovery against a dataset's planted mask, for the workflow (rule mask_recovery).

A simulated dataset keeps its truth in ``uns["simulation"]``: ``perturbations`` (row labels)
and ``true_mask`` (perturbations x true latent dims); both the embedded simulation
(``source: simulate``) and the reference-like one (``source: reference_sim``) have it. Each
masked run's q(mask) (layer ``mask_prob`` of its perturbation_latents.h5ad, rows by
perturbation name) is scored by ``recovery.mask_stats`` under both matchings: ``mask``
(learned columns matched on the thresholded masks, the reference's convention) and
``probability`` (matched on q itself, ours). Runs without a mask layer are skipped.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from samsbench.recovery import MATCHINGS, mask_stats

log = logging.getLogger(__name__)

# Dataset sources whose prepared file carries a planted mask.
PLANTED_SOURCES = ("simulate", "reference_sim")
RUN_KEYS = ("experiment", "dataset", "model", "family", "split", "seed")
COLUMNS = [*RUN_KEYS, "matching", "threshold", "n_perturbations", "true_density", "density",
           "precision", "recall", "f1", "auroc"]


def dataset_source(config, experiment: str) -> str:
    dataset = config["experiments"][experiment]["dataset"]
    return config["datasets"][dataset]["source"]


def workflow_targets(config, experiment: str, results: str = "results") -> list[str]:
    """The experiment's mask-recovery table, if its dataset has a planted mask."""
    if dataset_source(config, experiment) not in PLANTED_SOURCES:
        return []
    return [f"{results}/{experiment}/mask_recovery.tsv"]


def planted_mask(adata: ad.AnnData) -> tuple[list[str], np.ndarray]:
    """(perturbation labels, true mask) from ``uns["simulation"]``; a clear error if absent."""
    sim = adata.uns.get("simulation")
    if not isinstance(sim, dict) or "true_mask" not in sim or "perturbations" not in sim:
        raise ValueError('the dataset has no planted mask (uns["simulation"] with '
                         '"perturbations" and "true_mask")')
    labels = [str(p) for p in np.asarray(sim["perturbations"])]
    mask = np.asarray(sim["true_mask"], dtype=float)
    if mask.ndim != 2 or mask.shape[0] != len(labels):
        raise ValueError(f'uns["simulation"]["true_mask"] has shape {mask.shape} for '
                         f"{len(labels)} perturbations")
    return labels, mask


def run_recovery(labels: list[str], true_mask: np.ndarray, latents: ad.AnnData, run: dict,
                 threshold: float = 0.5) -> pd.DataFrame:
    """Rows (one per matching) for one run; empty when the run has no mask."""
    if "mask_prob" not in latents.layers:
        log.info("run %s/%s/seed%s has no mask; skipped", run.get("model"), run.get("split"),
                 run.get("seed"))
        return pd.DataFrame(columns=COLUMNS)
    names = latents.obs_names.astype(str)
    missing = [p for p in labels if p not in set(names)]
    if missing:
        raise ValueError(f"run {run.get('model')} has no mask row for planted perturbations "
                         f"{missing[:5]}")
    position = {n: i for i, n in enumerate(names)}
    q = np.asarray(latents.layers["mask_prob"], dtype=float)[[position[p] for p in labels]]
    rows = []
    for matching in MATCHINGS:
        stats = mask_stats(true_mask, q, threshold=threshold, matching=matching)
        rows.append({**{k: run.get(k) for k in RUN_KEYS}, "matching": matching,
                     "threshold": threshold, "n_perturbations": len(labels),
                     "true_density": float((true_mask > 0).mean()), "density": stats["density"],
                     **{k: stats[k] for k in ("precision", "recall", "f1", "auroc")}})
    return pd.DataFrame(rows, columns=COLUMNS)


def mask_recovery_table(data_path: str, latents_paths: list[str], runs: list[dict],
                        threshold: float = 0.5) -> pd.DataFrame:
    """Every run's rows for one experiment (the dataset is read once)."""
    if len(latents_paths) != len(runs):
        raise ValueError(f"{len(latents_paths)} latents files for {len(runs)} runs")
    meta = ad.read_h5ad(data_path, backed="r")  # uns only; X stays on disk
    try:
        labels, true_mask = planted_mask(meta)
    finally:
        meta.file.close()
    frames = [run_recovery(labels, true_mask, ad.read_h5ad(path), run, threshold)
              for path, run in zip(latents_paths, runs)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
