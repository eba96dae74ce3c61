"""The export step: a run's test perturbations as cells for another scorer (cell-eval).

cell-eval (Arc Institute) compares a predicted and a real AnnData of cells. For the test
perturbations of a run this writes both, on the dataset's genes in the dataset's order:

* ``real.h5ad``: the test cells of the test perturbations and every control cell (the cells
  our held-out data ATE is computed on; a run scored against some cells only, the replicate
  ceiling, exports those);
* ``predicted.h5ad``: ``n_cells`` cells per test perturbation plus the same REAL control
  cells, so that no one can improve a delta with predicted controls. ``mode: sample`` draws
  cells from the model's generative process (``inference.sample_cells``: fresh global and
  local latents per cell, counts from the decoder's likelihood with library sizes resampled
  from the real control cells); ``mode: mean`` writes, for each perturbation, ``n_cells``
  copies of (real control mean + the run's predicted ATE), which makes cell-eval's
  ``pearson_delta`` equal to ours. A mean log expression below 0 is no valid profile, so by
  default such values are set to 0 (``clip=True``): their number and share are logged and
  recorded (``uns["clipped_values"]``, ``uns["clipped_fraction"]``), and where any was clipped
  cell-eval's pearson_delta differs from ours (on a sparse panel most of a prediction can be
  clipped: an ATE below minus the control mean). cell-eval refuses negative values, so
  ``clip=False`` (``--no-clip``, config ``export_clip: false``) shifts instead: each gene gets,
  in both files and every cell, the smallest offset that makes its values >= 0
  (``uns["gene_offsets"]``). Every delta to the control is unchanged, so the export
  round-trips: cell-eval's pearson_delta equals ours. Metrics of absolute levels (cell-eval's
  fold changes) are then on shifted values; use the clipped export for those.
  ``auto`` samples for models with a likelihood; mean-effect baselines always write means.

Values are ln(1 + 10^4 x / total) per cell (``metrics.ln_cp10k``), what cell-eval expects
(scanpy's ``normalize_total(target_sum=1e4)`` + ``log1p``); ``uns["normalisation"]`` says so.
Our metrics use log2 of the same quantity, a constant factor, so correlations are unchanged.
``obs["target_gene"]`` holds the perturbation and the control is ``non-targeting`` unless the
dataset names another: cell-eval's defaults (``--pert-col``, ``--control-pert``).
"""

from __future__ import annotations

import logging
import math
import os

import anndata as ad
import numpy as np
import pandas as pd

from samsbench import io as sbio
from samsbench import metrics
from samsbench.data import contract

log = logging.getLogger(__name__)

PERT_COL = "target_gene"  # cell-eval's default --pert-col
NORMALISATION = "ln(1 + 1e4 * counts / total counts of the cell): scanpy normalize_total(1e4) + log1p"
MODES = ("auto", "mean", "sample")


def _frame(X, labels, genes, uns) -> ad.AnnData:
    obs = pd.DataFrame({PERT_COL: pd.Categorical(np.asarray(labels, dtype=str))},
                       index=[f"cell{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    adata.uns.update(uns)
    return adata


def check_out_dir(out_dir: str) -> None:
    """The export writes a folder; an existing file there is a mistake named before any work."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is an existing file; the export writes a folder "
                         "(predicted.h5ad, real.h5ad): give a folder path")


def export_cell_eval(model_path: str, data_path: str, split_path: str, out_dir: str,
                     n_cells: int = 100, mode: str = "auto", predictions_path: str | None = None,
                     seed: int = 0, device: str = "cpu",
                     family: str | None = None, clip: bool = True) -> dict[str, str]:
    """Write ``predicted.h5ad`` and ``real.h5ad`` in ``out_dir``; returns their paths.
    ``family``: the config's family, needed for a plug-in (inference.load_model); ``clip``:
    set mean-mode values below 0 to 0 (see the module docstring)."""
    from samsbench import inference
    from samsbench.stages.evaluate import read_predictions, truth_cells
    from samsbench.stages.train import load_data, pick_device

    if mode not in MODES:
        raise ValueError(f"export mode must be one of {MODES}, got {mode!r}")
    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    check_out_dir(out_dir)
    model, record = inference.load_model(model_path, pick_device(device), family or None)
    data = load_data(data_path, split_path, record["encoding"], device)
    adata = contract.read(data_path)
    control = contract.control_label(adata)
    test = sorted(set(data.labels[data.split == "test"]) - {control})
    if not test:
        raise ValueError(f"{split_path}: no perturbation has test cells; nothing to export")
    use_mean = not model.has_likelihood or mode == "mean"
    if mode == "sample" and not model.has_likelihood:
        log.info("%s predicts means only; exporting its mean as cells", record["family"])

    # The real cells: those our scorer uses (all cells, or the run's truth cells).
    predictions_path = predictions_path or sbio.run_file(os.path.dirname(model_path),
                                                         "predictions")
    has_predictions = os.path.exists(predictions_path)
    keep = truth_cells(predictions_path, adata) if has_predictions else None
    truth = adata if keep is None else adata[keep]
    labels = truth.obs[contract.PERTURBATION_KEY].astype(str).to_numpy()
    # the held-out truth: the test cells of the test perturbations, and every control cell
    in_test = pd.Index(data.cell_ids).get_indexer(truth.obs_names)
    in_test = data.split[in_test] == "test"
    real_rows = np.flatnonzero((np.isin(labels, test) & in_test) | (labels == control))
    real_X = metrics.ln_cp10k(truth.X[real_rows])
    real_labels = labels[real_rows]
    control_X = real_X[real_labels == control]
    if len(control_X) == 0:
        raise ValueError(f"{data_path}: no control cells {control!r} to copy into the export")
    genes = adata.var_names.astype(str).tolist()

    offsets = np.zeros(len(genes))
    if use_mean:
        if has_predictions:
            pred_ate = read_predictions(predictions_path, adata).loc[test]
        else:
            means = inference.predicted_means(model, data, [control] + test)
            pred_ate = pd.DataFrame(means[1:] - means[0], index=test, columns=data.genes)
        # mean log2 -> mean ln: one factor ln 2; the real control mean is the anchor
        pred = control_X.mean(axis=0) + math.log(2.0) * pred_ate.loc[test, genes].to_numpy()
        # a mean below 0 is no valid log profile; clipping it changes the delta there, so
        # the number and share are said (clip=False keeps them: the export round-trips)
        clipped = int((pred < 0).sum())
        if clipped:
            log.warning("%d of %d predicted mean values (%.1f%%) are below 0 (an ATE below "
                        "minus the control mean)%s", clipped, pred.size,
                        100 * clipped / pred.size,
                        "; set to 0, so cell-eval's pearson_delta differs from ours "
                        "(--no-clip shifts them instead)" if clip else
                        "; genes shifted in both files instead (deltas unchanged)")
        fraction = clipped / pred.size
        pred_X = np.repeat(np.clip(pred, 0.0, None) if clip else pred, n_cells, axis=0)
        if not clip:
            clipped = 0
            # per gene, the offset that lifts its lowest value to 0, in both files: deltas
            # (and so cell-eval's pearson_delta) are unchanged
            offsets = np.maximum(0.0, -pred.min(axis=0))
            pred_X, real_X, control_X = pred_X + offsets, real_X + offsets, control_X + offsets
    else:
        clipped, fraction = 0, 0.0
        counts = truth.X[real_rows][real_labels == control]
        libraries = np.asarray(counts.sum(axis=1)).ravel()
        pred_X = metrics.ln_cp10k(inference.sample_cells(model, data, test, n_cells, libraries,
                                                         seed))
    pred_labels = np.repeat(np.asarray(test, dtype=str), n_cells)

    uns = {"normalisation": NORMALISATION, "control_label": control, "pert_col": PERT_COL,
           "source": "samsbench export --format cell-eval", "model_path": os.fspath(model_path)}
    paths = {"predicted": os.path.join(out_dir, "predicted.h5ad"),
             "real": os.path.join(out_dir, "real.h5ad")}
    predicted = _frame(np.vstack([pred_X, control_X]),
                       np.concatenate([pred_labels, np.full(len(control_X), control)]), genes,
                       {**uns, "prediction_mode": "mean" if use_mean else "sample",
                        "cells_per_perturbation": int(n_cells), "clipped_values": clipped,
                        "clipped_fraction": float(fraction if clip else 0.0),
                        "negative_fraction": float(fraction),
                        "gene_offsets": np.asarray(offsets, dtype=np.float64),
                        "control_cells": "real, copied from real.h5ad"})
    real = _frame(real_X, real_labels, genes, {**uns, "cells": "real",
                                               "gene_offsets": np.asarray(offsets, float)})
    sbio.write_h5ad(predicted, paths["predicted"])
    sbio.write_h5ad(real, paths["real"])
    return paths
