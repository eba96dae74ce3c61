"""Evaluation: data ATE, predictions as h5ad, effect metrics and ``samsbench score``.

Definitions follow the reference (data_and_evaluation.md §5): per cell log2(CP10k + 1) over the
modelled genes, ATE(t) = mean over cells labelled t minus the control mean, on all cells of the
dataset. Metrics compare a predicted ATE matrix (perturbations x genes) with the data ATE on the
perturbation subsets all/train/val/test. Everything here is numpy/scipy/pandas; no torch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from samsbench.data import contract
from samsbench.data.splits import SplitError, read_split

TARGET_SUM = 1e4
TOP_K = 20
DEFAULT_CHUNK_ROWS = 8192
SUBSET_ORDER = ("all", "train", "val", "test")
METRICS = (
    # the reference's four metrics
    "ate_pearson",
    "ate_r2",
    "ate_pearson_top20",
    "ate_r2_top20",
    # beyond the reference
    "pearson_delta",
    "pearson_delta_top20",
    "effect_rmse",
    "direction_agreement_top20",
    "discrimination_rank",
)
METRIC_COLUMNS = ["metric", "subset", "value"]


class PredictionsError(ValueError):
    """A predictions h5ad cannot be scored against the dataset."""


# --------------------------------------------------------------------------------------------
# Normalisation and data ATE
# --------------------------------------------------------------------------------------------


def log_cp10k(X):
    """log2(10,000 * x / total + 1) per cell (row); a cell with zero total becomes zeros.

    Dense input gives a dense float64 array; sparse input gives a CSR float64 matrix with the
    same sparsity (the transform maps 0 to 0). Call it on row blocks to bound memory.
    """
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64, copy=True)
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = _safe_scale(totals)
        X.data *= np.repeat(scale, np.diff(X.indptr))
        _log2_1p_inplace(X.data)
        return X
    X = np.array(X, dtype=np.float64)  # a copy: the caller's counts stay untouched
    if X.ndim != 2:
        raise ValueError(f"log_cp10k expects a 2-D cells x genes matrix, got shape {X.shape}")
    scale = _safe_scale(X.sum(axis=1))
    X *= scale[:, None]
    _log2_1p_inplace(X)
    return X


def _log2_1p_inplace(values: np.ndarray) -> None:
    # log1p in place avoids a temporary the size of the block.
    np.log1p(values, out=values)
    values *= 1.0 / math.log(2.0)


def _safe_scale(totals: np.ndarray) -> np.ndarray:
    # Zero-total cells get scale 0 so they map to zeros instead of NaN (0/0).
    scale = np.zeros_like(totals, dtype=np.float64)
    positive = totals > 0
    scale[positive] = TARGET_SUM / totals[positive]
    return scale


def _row_blocks(X, chunk_rows: int):
    """Yield (start, stop, transformed block) over row chunks of X (dense, sparse or backed)."""
    if sp.issparse(X) and X.format != "csr":
        X = sp.csr_matrix(X)  # row slicing of CSC/COO is slow or unsupported
    n = X.shape[0]
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        yield start, stop, log_cp10k(X[start:stop])


def perturbation_means(
    adata: ad.AnnData, labels=None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> pd.DataFrame:
    """Mean log2(CP10k + 1) per perturbation label, over all cells (rows sorted by label).

    ``labels`` are per-cell labels (default ``obs["perturbation"]``). Sums are an indicator
    matrix (labels x cells, sparse) times the transformed counts, one block of rows at a time,
    so a sparse X is never densified whole.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if labels is None:
        labels = adata.obs[contract.PERTURBATION_KEY]
    labels = np.asarray(labels).astype(str)
    if labels.shape != (adata.n_obs,):
        raise ValueError(f"need one label per cell ({adata.n_obs}), got shape {labels.shape}")
    codes, uniques = pd.factorize(labels, sort=True)
    n_labels, n_genes = len(uniques), adata.n_vars
    sums = np.zeros((n_labels, n_genes), dtype=np.float64)
    for start, stop, block in _row_blocks(adata.X, chunk_rows):
        width = stop - start
        indicator = sp.csr_matrix(
            (np.ones(width), (codes[start:stop], np.arange(width))), shape=(n_labels, width)
        )
        product = indicator @ block
        sums += product.toarray() if sp.issparse(product) else product
    counts = np.bincount(codes, minlength=n_labels).astype(np.float64)
    return pd.DataFrame(
        sums / counts[:, None], index=pd.Index(uniques, name="perturbation"),
        columns=pd.Index(adata.var_names.astype(str), name="gene"),
    )


def data_ate(adata: ad.AnnData, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> pd.DataFrame:
    """Reference data ATE: per non-control label, mean log2(CP10k+1) minus the control mean."""
    control = contract.control_label(adata)
    means = perturbation_means(adata, chunk_rows=chunk_rows)
    if control not in means.index:
        raise ValueError(f"no control cells labelled {control!r}; cannot compute the data ATE")
    return means.drop(index=control) - means.loc[control]


# --------------------------------------------------------------------------------------------
# Predictions h5ad
# --------------------------------------------------------------------------------------------


def write_predictions(
    means: pd.DataFrame, path, control_label: str, metadata: dict | None = None,
    truth_cells: list[str] | None = None,
) -> None:
    """Write predicted mean log2(CP10k+1) per perturbation (control row included) as h5ad.

    Rows are perturbations (``obs["perturbation"]``), columns genes (var names); the control
    label goes to ``uns["control_label"]`` and ``metadata`` to ``uns["metadata"]``;
    ``truth_cells`` (cell ids to score against, see ``truth_cells``) to ``uns["truth_cells"]``.
    """
    values = np.asarray(means.to_numpy(), dtype=np.float64)
    where = f"predictions for {os.fspath(path)}"
    labels = means.index.astype(str)
    genes = means.columns.astype(str)
    if control_label not in set(labels):
        raise PredictionsError(f"{where}: no row for the control {control_label!r}")
    if not labels.is_unique:
        duplicated = _first(labels[labels.duplicated()])
        raise PredictionsError(f"{where}: duplicated perturbations {duplicated}")
    if not genes.is_unique:
        raise PredictionsError(f"{where}: duplicated genes {_first(genes[genes.duplicated()])}")
    _check_finite(values, labels, genes, where)
    adata = ad.AnnData(
        X=values,
        obs=pd.DataFrame({contract.PERTURBATION_KEY: np.asarray(labels)}, index=np.asarray(labels)),
        var=pd.DataFrame(index=np.asarray(genes)),
    )
    adata.uns["control_label"] = str(control_label)
    adata.uns["metadata"] = _h5ad_safe(metadata or {})
    if truth_cells is not None:
        adata.uns[TRUTH_CELLS_KEY] = np.asarray(truth_cells, dtype=str)
    contract.write_h5ad_atomic(adata, path)


def _h5ad_safe(value):
    """h5ad cannot store None or arbitrary objects in uns; keep plain values, stringify the rest."""
    if isinstance(value, dict):
        return {str(k): _h5ad_safe(v) for k, v in value.items()}
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_)):
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (bool, int, float, str)) for v in value
    ):
        return list(value) if value else ""
    return str(value)


def read_predictions(path, data_adata: ad.AnnData) -> pd.DataFrame:
    """Read a predictions h5ad and return its ATE (non-control rows minus the control row).

    Checks, each raising PredictionsError that names the file: readable h5ad, a
    ``obs["perturbation"]`` column, unique labels, the data's control label present, no label
    unknown to the data, the same gene set as the data (columns returned in the data's order),
    finite values.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PredictionsError(f"{path}: no such predictions file")
    try:
        pred = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many exception types for a broken file
        raise PredictionsError(f"{path}: not a readable h5ad file ({exc})") from exc

    key = contract.PERTURBATION_KEY
    if key not in pred.obs.columns:
        raise PredictionsError(
            f'{path}: obs has no "{key}" column holding the perturbation label of each row '
            f"(found columns: {list(pred.obs.columns)[:10]})"
        )
    labels = pd.Index(pred.obs[key].astype(str).to_numpy())
    if not labels.is_unique:
        raise PredictionsError(
            f"{path}: each perturbation needs exactly one row; duplicated: "
            f"{_first(labels[labels.duplicated()].unique())}"
        )

    control = contract.control_label(data_adata)
    file_control = pred.uns.get("control_label")
    if file_control is not None and str(file_control) != control:
        raise PredictionsError(
            f'{path}: uns["control_label"] is {str(file_control)!r} but the data\'s control is '
            f"{control!r}"
        )
    if control not in labels:
        raise PredictionsError(
            f"{path}: missing the control row {control!r}; the predicted ATE is each "
            "perturbation's row minus the control row"
        )

    data_labels = set(data_adata.obs[key].astype(str))
    unknown = [lab for lab in labels if lab not in data_labels]
    if unknown:
        raise PredictionsError(
            f"{path}: {len(unknown)} perturbations are not in the data: {_first(unknown)}"
        )

    data_genes = pd.Index(data_adata.var_names.astype(str))
    genes = pd.Index(pred.var_names.astype(str))
    if not genes.is_unique:
        raise PredictionsError(f"{path}: duplicated genes {_first(genes[genes.duplicated()])}")
    missing = data_genes.difference(genes, sort=False)
    extra = genes.difference(data_genes, sort=False)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} genes of the data are missing: {_first(missing)}")
        if len(extra):
            parts.append(f"{len(extra)} genes are not in the data: {_first(extra)}")
        raise PredictionsError(f"{path}: gene set does not match the data; " + "; ".join(parts))

    X = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
    values = np.asarray(X, dtype=np.float64)
    _check_finite(values, labels, genes, path)
    means = pd.DataFrame(values, index=labels, columns=genes).reindex(columns=data_genes)
    means.index.name, means.columns.name = "perturbation", "gene"
    return means.drop(index=control) - means.loc[control]


def _check_finite(values: np.ndarray, labels, genes, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise PredictionsError(
            f"{where}: {int(bad.sum())} NaN or infinite values, first at perturbation "
            f"{labels[row]!r}, gene {genes[col]!r}"
        )


def _first(items, k: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(str(x)) for x in items[:k])
    return f"[{shown}{', ...' if len(items) > k else ''}]"


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two 1-D vectors; NaN when either is constant (as scipy)."""
    return float(_row_pearson(x[None, :], y[None, :])[0])


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r per row of two equally shaped 2-D arrays; NaN for constant rows."""
    if x.shape[1] < 2:
        return np.full(x.shape[0], np.nan)
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    # Normalise before the dot product (as scipy) so large values do not overflow.
    xn = np.linalg.norm(xc, axis=1, keepdims=True)
    yn = np.linalg.norm(yc, axis=1, keepdims=True)
    # A constant row is tested exactly: its centred values can be float noise, not zero.
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum((xc / xn) * (yc / yn), axis=1)
    r = np.clip(r, -1.0, 1.0)
    r[constant] = np.nan
    return r


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn.metrics.r2_score on flat vectors, including its constant-truth convention."""
    if y_true.size < 2:
        return math.nan
    ss_res = float(np.sum((y_true - y_pred) ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / ss_tot


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def top_gene_indices(true_ate: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per row, column indices of the k largest |true ATE| (ties: lower gene index first)."""
    k = min(k, true_ate.shape[1])
    order = np.argsort(-np.abs(true_ate), axis=1, kind="stable")
    return order[:, :k]


def discrimination_rank(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over p of (#other true effects strictly closer to pred_p than true_p) / (n - 1)."""
    n = pred.shape[0]
    if n < 2:
        return math.nan
    dist = cdist(pred, true, metric="euclidean")
    own = np.diag(dist)
    closer = (dist < own[:, None]).sum(axis=1)  # the diagonal is never strictly closer
    return float(np.mean(closer / (n - 1)))


def _subset_metrics(pred: np.ndarray, true: np.ndarray, top: np.ndarray) -> dict[str, float]:
    rows = np.arange(pred.shape[0])[:, None]
    pred_top, true_top = pred[rows, top], true[rows, top]
    return {
        "ate_pearson": _pearson(pred.ravel(), true.ravel()),
        "ate_r2": _r2(true.ravel(), pred.ravel()),
        "ate_pearson_top20": _pearson(pred_top.ravel(), true_top.ravel()),
        "ate_r2_top20": _r2(true_top.ravel(), pred_top.ravel()),
        "pearson_delta": _nanmean(_row_pearson(pred, true)),
        "pearson_delta_top20": _nanmean(_row_pearson(pred_top, true_top)),
        "effect_rmse": float(np.sqrt(np.mean((pred - true) ** 2))),
        "direction_agreement_top20": float(np.mean(np.sign(pred_top) == np.sign(true_top))),
        "discrimination_rank": discrimination_rank(pred, true),
    }


def ate_metrics(
    pred_ate: pd.DataFrame, true_ate: pd.DataFrame, subsets: dict[str, list[str]]
) -> pd.DataFrame:
    """Metrics (columns metric, subset, value) of a predicted vs the data ATE per subset.

    Rows (perturbations) and columns (genes) are aligned by inner join in the data's order;
    the top-20 genes of a perturbation are chosen on |data ATE| over the aligned genes.
    Subsets with no aligned perturbation, and metrics that cannot be computed (NaN), are
    left out. Rows come subset by subset (all/train/val/test first), metrics in fixed order.
    """
    # Labels and genes are strings throughout; compare them as such.
    pred_ate = _with_str_axes(pred_ate)
    true_ate = _with_str_axes(true_ate)
    labels = true_ate.index[true_ate.index.isin(pred_ate.index)]
    genes = true_ate.columns[true_ate.columns.isin(pred_ate.columns)]
    if len(genes) == 0:
        raise ValueError("predicted and data ATE share no gene")
    true = true_ate.loc[labels, genes].to_numpy(dtype=np.float64)
    pred = pred_ate.loc[labels, genes].to_numpy(dtype=np.float64)
    top = top_gene_indices(true)
    position = pd.Series(np.arange(len(labels)), index=labels)

    ordered = [s for s in SUBSET_ORDER if s in subsets]
    ordered += sorted(s for s in subsets if s not in SUBSET_ORDER)
    records = []
    for name in ordered:
        members = pd.Index(pd.unique(np.asarray(subsets[name], dtype=str)))
        idx = position.reindex(members).dropna().to_numpy(dtype=int)
        if idx.size == 0:
            continue
        idx.sort()  # the data's order, whatever order the subset was listed in
        values = _subset_metrics(pred[idx], true[idx], top[idx])
        for metric in METRICS:
            if np.isfinite(values[metric]):
                records.append((metric, name, values[metric]))
    return pd.DataFrame.from_records(records, columns=METRIC_COLUMNS)


def _with_str_axes(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy(deep=False)
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    return frame


def subsets_from_split(labels_per_cell, split_per_cell, control: str) -> dict[str, list[str]]:
    """{"all": every non-control label, "train"/"val"/"test": those with >= 1 cell there}."""
    frame = pd.DataFrame({
        "label": np.asarray(labels_per_cell, dtype=str),
        "split": np.asarray(split_per_cell, dtype=str),
    })
    frame = frame[frame["label"] != control]
    subsets = {"all": sorted(frame["label"].unique())}
    for split in ("train", "val", "test"):
        subsets[split] = sorted(frame.loc[frame["split"] == split, "label"].unique())
    return subsets


# --------------------------------------------------------------------------------------------
# Scoring a predictions file, and the CLI
# --------------------------------------------------------------------------------------------


def score(predictions_path, data_path, split_path) -> pd.DataFrame:
    """Score a predictions h5ad against a prepared dataset and its split TSV."""
    data = contract.read(data_path)
    pred_ate = read_predictions(predictions_path, data)  # checks the file first
    # A predictions file may name the cells it is scored against (the replicate ceiling).
    keep = truth_cells(predictions_path, data)
    truth = data if keep is None else data[keep]
    true_ate = data_ate(truth)
    if not pred_ate.index.isin(true_ate.index).any():
        raise PredictionsError(
            f"{os.fspath(predictions_path)}: no non-control perturbation in common with the data"
        )
    split = read_split(split_path, data.obs_names)
    labels = data.obs[contract.PERTURBATION_KEY].to_numpy()
    control = contract.control_label(data)
    subsets = {**subsets_from_split(labels, split, control),
               **combo_seen_subsets(labels, split, control)}
    cells = truth.obs[contract.PERTURBATION_KEY].astype(str).value_counts()
    reference = perturbed_reference(true_ate, cells)
    return pd.concat([ate_metrics(pred_ate, true_ate, subsets),
                      systema_metrics(pred_ate, true_ate, subsets, reference)],
                     ignore_index=True)


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``samsbench score`` on an argparse subparsers object (func=run_score)."""
    parser = subparsers.add_parser(
        "score",
        help="score a predictions h5ad (mean log2(CP10k+1) per perturbation) against a dataset",
        description=(
            "Score predicted mean expression per perturbation against the data ATE. The file "
            'needs obs["perturbation"] (one row per perturbation, the control included), the '
            "dataset's genes as var names, and X = predicted mean log2(CP10k + 1)."
        ),
    )
    parser.add_argument("--predictions", required=True, help="predictions .h5ad")
    parser.add_argument("--data", required=True, help="prepared dataset .h5ad (raw counts)")
    parser.add_argument("--splits", required=True, help="split TSV (cell_id, split)")
    parser.add_argument("--out", default=None, help="metrics TSV to write (default: stdout)")
    parser.set_defaults(func=run_score)
    return parser


def run_score(args: argparse.Namespace) -> int:
    try:
        metrics = score(args.predictions, args.data, args.splits)
    except (PredictionsError, contract.ContractError, SplitError) as exc:
        print(f"samsbench score: error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        metrics.to_csv(sys.stdout, sep="\t", index=False)
        return 0
    out = os.fspath(args.out)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    metrics.to_csv(tmp, sep="\t", index=False)
    os.replace(tmp, out)
    return 0


# --------------------------------------------------------------------------------------------
# Beyond the reference (issue 13): scoring against a subset of cells (the replicate ceiling),
# Systema-style metrics, GEARS' combo_seen tags and baseline-normalised scores
# --------------------------------------------------------------------------------------------

TRUTH_CELLS_KEY = "truth_cells"
EXTRA_METRICS = ("pearson_delta_perturbed", "centroid_accuracy")
LOWER_IS_BETTER = frozenset({"effect_rmse", "discrimination_rank"})
BASELINE_FAMILIES = ("control_mean", "additive_mean", "train_mean", "linear")
CEILING_FAMILY = "replicate"


def truth_cells(predictions_path, data_adata: ad.AnnData) -> np.ndarray | None:
    """Boolean per data cell from the predictions' ``uns["truth_cells"]`` (cell ids the
    predictions must be scored against), or None when the file has no such record."""
    import h5py

    path = os.fspath(predictions_path)
    with h5py.File(path, "r") as fh:
        if "uns" not in fh or TRUTH_CELLS_KEY not in fh["uns"]:
            return None
        ids = fh["uns"][TRUTH_CELLS_KEY][()]
    ids = pd.Index([i.decode() if isinstance(i, bytes) else str(i) for i in np.ravel(ids)])
    keep = pd.Index(data_adata.obs_names.astype(str)).isin(ids)
    if int(keep.sum()) != len(ids.unique()):
        unknown = ids.difference(data_adata.obs_names.astype(str))
        raise PredictionsError(
            f'{path}: uns["{TRUTH_CELLS_KEY}"] names {len(unknown)} cells that are not in the '
            f"data: {_first(unknown)}"
        )
    return np.asarray(keep)


def perturbed_reference(true_ate: pd.DataFrame, cells_per_label: pd.Series) -> np.ndarray:
    """Mean of all perturbed cells minus the control mean: the cell-weighted mean of the data
    ATE rows (Systema measures effects against this instead of the control)."""
    weights = cells_per_label.reindex(true_ate.index).fillna(0).to_numpy(dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("no perturbed cells for the perturbed-mean reference")
    return weights @ true_ate.to_numpy(dtype=np.float64) / weights.sum()


def centroid_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of perturbations whose prediction is strictly closer (Euclidean) to their own
    observed effect than to every other perturbation's; NaN with fewer than two."""
    if pred.shape[0] < 2:
        return math.nan
    dist = cdist(pred, true, metric="euclidean")
    own = np.diag(dist).copy()
    np.fill_diagonal(dist, np.inf)
    return float(np.mean(own < dist.min(axis=1)))


def systema_metrics(pred_ate: pd.DataFrame, true_ate: pd.DataFrame,
                    subsets: dict[str, list[str]], reference: np.ndarray) -> pd.DataFrame:
    """``pearson_delta_perturbed``: mean per-perturbation Pearson of (predicted - reference)
    vs (observed - reference), the reference being the mean of all perturbed cells, so that
    a prediction of the average perturbation scores ~0 (it scores high on pearson_delta);
    ``centroid_accuracy`` (see there). Same alignment and subset rules as ``ate_metrics``."""
    pred_ate, true_ate = _with_str_axes(pred_ate), _with_str_axes(true_ate)
    labels = true_ate.index[true_ate.index.isin(pred_ate.index)]
    genes = true_ate.columns[true_ate.columns.isin(pred_ate.columns)]
    ref = pd.Series(reference, index=true_ate.columns).loc[genes].to_numpy()
    true = true_ate.loc[labels, genes].to_numpy(dtype=np.float64)
    pred = pred_ate.loc[labels, genes].to_numpy(dtype=np.float64)
    position = pd.Series(np.arange(len(labels)), index=labels)
    ordered = [s for s in SUBSET_ORDER if s in subsets]
    ordered += sorted(s for s in subsets if s not in SUBSET_ORDER)
    records = []
    for name in ordered:
        idx = np.sort(position.reindex(pd.Index(pd.unique(np.asarray(subsets[name], dtype=str))))
                      .dropna().to_numpy(dtype=int))
        if idx.size == 0:
            continue
        values = {
            "pearson_delta_perturbed": _nanmean(_row_pearson(pred[idx] - ref, true[idx] - ref)),
            "centroid_accuracy": centroid_accuracy(pred[idx], true[idx]),
        }
        records += [(m, name, values[m]) for m in EXTRA_METRICS if np.isfinite(values[m])]
    return pd.DataFrame.from_records(records, columns=METRIC_COLUMNS)


def combo_seen_subsets(labels_per_cell, split_per_cell, control: str) -> dict[str, list[str]]:
    """GEARS' tags for the test combinations: ``combo_seen{k}`` lists the combinations with
    test cells of which k components were seen in training as a single perturbation (have
    training cells under their own label). Empty tags are left out."""
    labels = np.asarray(labels_per_cell, dtype=str)
    split = np.asarray(split_per_cell, dtype=str)
    seen = set(labels[(split == "train") & (labels != control)])
    out: dict[str, list[str]] = {}
    for label in sorted(set(labels[(split == "test") & (labels != control)])):
        parts = contract.components(label)
        if len(parts) < 2:
            continue
        out.setdefault(f"combo_seen{sum(p in seen for p in parts)}", []).append(label)
    return dict(sorted(out.items()))


def normalised_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``normalised`` = (u - b) / (r - b) and ``normalised_note`` to a tidy metrics table.

    Per experiment x split x metric x subset: b is the best simple baseline (families in
    BASELINE_FAMILIES; best = highest, or lowest for LOWER_IS_BETTER metrics; each model's
    value averaged over seeds), r the replicate ceiling (family ``replicate``, averaged over
    seeds). 0 = no better than the best simple baseline, 1 = as good as a replicate. NaN
    with the reason in ``normalised_note`` when there is no baseline, no ceiling, or the
    ceiling is not better than the baseline.
    """
    out = table.copy()
    if out.empty or "family" not in out:
        out["normalised"], out["normalised_note"] = np.nan, ""
        return out
    keys = [k for k in ("experiment", "split", "metric", "subset") if k in out]
    family = out["family"].fillna("").astype(str)
    by_model = out.assign(family=family).groupby(keys + ["family", "model"], dropna=False)[
        "value"].mean().reset_index()
    base = by_model[by_model["family"].isin(BASELINE_FAMILIES)].copy()
    base["oriented"] = np.where(base["metric"].isin(LOWER_IS_BETTER), -1, 1) * base["value"]
    best = base.sort_values("oriented", kind="stable").groupby(keys, dropna=False).tail(1)
    best = best[keys + ["value"]].rename(columns={"value": "_b"})
    ceiling = by_model[by_model["family"] == CEILING_FAMILY].groupby(keys, dropna=False)[
        "value"].mean().rename("_r").reset_index()
    merged = out.merge(best, on=keys, how="left").merge(ceiling, on=keys, how="left")
    sign = np.where(merged["metric"].isin(LOWER_IS_BETTER), -1.0, 1.0)
    gap = sign * (merged["_r"] - merged["_b"])
    note = np.select(
        [merged["_b"].isna(), merged["_r"].isna(), ~(gap > 0)],
        ["no simple baseline for this metric and subset",
         "no replicate ceiling for this metric and subset",
         "the replicate ceiling is not better than the best simple baseline"],
        default="",
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (merged["value"] - merged["_b"]) / (merged["_r"] - merged["_b"])
    out["normalised"] = np.where(note == "", value, np.nan)
    out["normalised_note"] = note
    return out


SCORE_TABLE_METRICS = ("pearson_delta", "pearson_delta_perturbed", "ate_pearson", "ate_r2",
                       "effect_rmse", "centroid_accuracy", "discrimination_rank")


def score_table(metrics: pd.DataFrame, subset: str = "test") -> pd.DataFrame:
    """One row per model of a normalised metrics table (mean over seeds and splits), raw and
    normalised value side by side per metric, on one subset; the ceiling's row included."""
    part = metrics[metrics["subset"] == subset]
    part = part[part["metric"].isin(SCORE_TABLE_METRICS)]
    if part.empty:
        return pd.DataFrame(columns=["model", "family"])
    grouped = part.groupby(["model", "family", "metric"], dropna=False)[
        ["value", "normalised"]].mean().reset_index()
    wide = grouped.pivot(index=["model", "family"], columns="metric",
                         values=["value", "normalised"])
    columns = {}
    for metric in [m for m in SCORE_TABLE_METRICS if m in set(grouped["metric"])]:
        columns[metric] = wide[("value", metric)]
        columns[f"{metric}_normalised"] = wide[("normalised", metric)]
    table = pd.DataFrame(columns).reset_index()
    first = SCORE_TABLE_METRICS[0] if SCORE_TABLE_METRICS[0] in table else table.columns[2]
    return table.sort_values(first, ascending=False, kind="stable").reset_index(drop=True)
