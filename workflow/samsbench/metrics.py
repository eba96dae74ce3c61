"""The evaluation maths: log2(CP10k+1), data ATE and the effect metrics.

Definitions follow the reference implementation's evaluation: per cell log2(CP10k + 1) over the
modelled genes, ATE(t) = mean over cells labelled t minus the control mean. Metrics compare a
predicted ATE matrix (perturbations x genes) with the data ATE on the perturbation subsets
all/train/val/test. Everything here is numpy/scipy/pandas; no torch, and
no file is read or written (the evaluate stage does that). A new metric is one entry in
``METRICS`` (a ``Metric``: its direction and its place in the report's tables included).

Beyond the reference (issue 13): Systema-style metrics (``centroid_accuracy``, and
``pearson_delta_perturbed`` against the mean of all perturbed cells, ``REFERENCE_METRICS``),
GEARS' ``combo_seen{k}`` subsets, and scores normalised between the best simple baseline and
the ceiling (``normalised_scores``, ``score_table``).

The truth (issue 25): each subset is scored against its own held-out cells
(``truth_by_split``, ``heldout_metrics``: a perturbation's test cells for the test subsets,
all control cells); the paper's all-cells convention is kept as the labelled ``paper_*`` rows
(``paper_metrics``) for the paper's tables. The ceiling and the bootstrap are in
``samsbench.ceiling``.

At about 600 lines the module keeps the truth, the metric registry and the normalised scores
together: they share the subset and direction rules, and each short function reads best beside
the ones it uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from samsbench.labels import PERTURBATION_KEY, components, control_label

TARGET_SUM = 1e4
TOP_K = 20
DEFAULT_CHUNK_ROWS = 8192
SUBSET_ORDER = ("all", "train", "val", "test")
METRIC_COLUMNS = ["metric", "subset", "value"]


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


def ln_cp10k(X) -> np.ndarray:
    """Dense ln(1 + 1e4 x / total) per row, scanpy's normalize_total(1e4) + log1p (what
    cell-eval expects); a zero-total row stays zero. ``log_cp10k`` is this over ln 2."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = np.asarray(X, dtype=np.float64)
    return np.log1p(X * _safe_scale(X.sum(axis=1))[:, None])


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
        labels = adata.obs[PERTURBATION_KEY]
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
    control = control_label(adata)
    means = perturbation_means(adata, chunk_rows=chunk_rows)
    if control not in means.index:
        raise ValueError(f"no control cells labelled {control!r}; cannot compute the data ATE")
    return means.drop(index=control) - means.loc[control]


# Which cells are the truth of each subset (issue 25): a subset of perturbations is scored on
# those perturbations' cells in the matching split, against the mean of ALL control cells.
# ``all`` uses every cell; any other subset (GEARS' combo_seen{k}) is a test subset.
SUBSET_TRUTH = {"all": "all", "train": "train", "val": "val"}


def subset_truth(subset: str) -> str:
    return SUBSET_TRUTH.get(subset, "test")


def truth_by_split(adata: ad.AnnData, split_per_cell,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, tuple]:
    """Held-out data ATE per split: {split: (ATE, cells per label)} for every split with
    perturbed cells, plus ``all`` (every cell: the paper's convention). A perturbation's ATE in
    split s is the mean log2(CP10k+1) of its cells in s minus the mean of ALL control cells
    (the controls are not split: they are the reference, not the thing predicted). One pass
    over X: labels are grouped by (split, label)."""
    control = control_label(adata)
    labels = adata.obs[PERTURBATION_KEY].astype(str).to_numpy()
    split = np.asarray(split_per_cell).astype(str)
    if split.shape != labels.shape:
        raise ValueError(f"need one split per cell ({len(labels)}), got shape {split.shape}")
    is_control = labels == control
    if not is_control.any():
        raise ValueError(f"no control cells labelled {control!r}; cannot compute the data ATE")
    sep = "\x1f"  # a character no label holds
    keys = np.where(is_control, sep, np.char.add(np.char.add(split, sep), labels))
    means = perturbation_means(adata, labels=keys, chunk_rows=chunk_rows)
    counts = pd.Series(keys).value_counts().reindex(means.index).astype(float)
    control_mean = means.loc[sep]
    parts = means.index.to_series().str.split(sep, n=1, expand=True)
    out = {}
    perturbed = means.index != sep
    for name in sorted(set(parts.loc[perturbed, 0])):
        rows = perturbed & (parts[0] == name).to_numpy()
        ate = means[rows] - control_mean
        ate.index = pd.Index(parts.loc[rows, 1].to_numpy(), name="perturbation")
        cells = pd.Series(counts[rows].to_numpy(), index=ate.index)
        order = np.argsort(ate.index.to_numpy(), kind="stable")
        out[name] = (ate.iloc[order], cells.iloc[order])
    # all cells: the count-weighted mean of each label's per-split means
    frame = means[perturbed].mul(counts[perturbed], axis=0)
    frame.index = pd.Index(parts.loc[perturbed, 1].to_numpy())
    total = frame.groupby(level=0).sum()
    cells = counts[perturbed].groupby(parts.loc[perturbed, 1].to_numpy()).sum()
    all_ate = total.div(cells, axis=0) - control_mean
    all_ate.index.name = "perturbation"
    out["all"] = (all_ate, cells.reindex(all_ate.index))
    return out


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


def centroid_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of perturbations whose prediction is strictly closer (Euclidean) to their own
    observed effect than to every other perturbation's; NaN with fewer than two."""
    if pred.shape[0] < 2:
        return math.nan
    dist = cdist(pred, true, metric="euclidean")
    own = np.diag(dist).copy()
    np.fill_diagonal(dist, np.inf)
    return float(np.mean(own < dist.min(axis=1)))


def perturbed_reference(true_ate: pd.DataFrame, cells_per_label: pd.Series) -> np.ndarray:
    """Mean of all perturbed cells minus the control mean: the cell-weighted mean of the data
    ATE rows (Systema measures effects against this instead of the control)."""
    weights = cells_per_label.reindex(true_ate.index).fillna(0).to_numpy(dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("no perturbed cells for the perturbed-mean reference")
    return weights @ true_ate.to_numpy(dtype=np.float64) / weights.sum()


def _top(fn):
    """A metric on the top-|data ATE| genes of each perturbation (``top``: their indices)."""
    def metric(pred, true, top):
        rows = np.arange(pred.shape[0])[:, None]
        return fn(pred[rows, top], true[rows, top], top)

    return metric


@dataclasses.dataclass(frozen=True)
class Metric:
    """A registry entry: the function, its direction, and its place in the report (column
    position in the leaderboard, on the test subset, and in scores_table.tsv; 0: not shown).
    A plain function is an entry too: higher is better, shown in metrics.tsv only."""

    fn: Callable
    lower_is_better: bool = False
    leaderboard: int = 0
    score_table: int = 0

    def __call__(self, *args):
        return self.fn(*args)


# The metric registry, in the order of the output rows: name -> f(pred, true, top) on one
# subset's predicted and data ATE (perturbations x genes) and the top-20 gene indices per row.
# A new metric is one entry here.
METRICS = {
    # the reference's four metrics
    "ate_pearson": Metric(lambda p, t, _: _pearson(p.ravel(), t.ravel()), leaderboard=1,
                          score_table=3),
    "ate_r2": Metric(lambda p, t, _: _r2(t.ravel(), p.ravel()), leaderboard=2, score_table=4),
    "ate_pearson_top20": _top(lambda p, t, _: _pearson(p.ravel(), t.ravel())),
    "ate_r2_top20": _top(lambda p, t, _: _r2(t.ravel(), p.ravel())),
    # beyond the reference
    "pearson_delta": Metric(lambda p, t, _: _nanmean(_row_pearson(p, t)), leaderboard=3,
                            score_table=1),
    "pearson_delta_top20": _top(lambda p, t, _: _nanmean(_row_pearson(p, t))),
    "effect_rmse": Metric(lambda p, t, _: float(np.sqrt(np.mean((p - t) ** 2))),
                          lower_is_better=True, leaderboard=5, score_table=5),
    "direction_agreement_top20": Metric(
        _top(lambda p, t, _: float(np.mean(np.sign(p) == np.sign(t)))), leaderboard=6),
    "discrimination_rank": Metric(lambda p, t, _: discrimination_rank(p, t),
                                  lower_is_better=True, leaderboard=7, score_table=7),
    "centroid_accuracy": Metric(lambda p, t, _: centroid_accuracy(p, t), leaderboard=8,
                                score_table=6),
}

# Metrics of effects measured against a reference effect r (one value per gene; Systema: the
# mean of all perturbed cells, ``perturbed_reference``) instead of the control:
# name -> f(pred, true, r). ``pearson_delta_perturbed`` scores ~0 for a prediction of the
# average perturbation, which scores high on pearson_delta. Computed when ``ate_metrics`` is
# given a reference.
REFERENCE_METRICS = {
    "pearson_delta_perturbed": Metric(lambda p, t, r: _nanmean(_row_pearson(p - r, t - r)),
                                      leaderboard=4, score_table=2),
}


def lower_is_better(metric: str) -> bool:
    """The metric's direction, from its registry entry (the normalised score turns it round)."""
    entry = {**METRICS, **REFERENCE_METRICS}.get(metric)
    return bool(getattr(entry, "lower_is_better", False))


def _shown(where: str) -> list[str]:
    entries = {**METRICS, **REFERENCE_METRICS}.items()
    return [n for n, e in sorted(((n, e) for n, e in entries if getattr(e, where, 0)),
                                 key=lambda item: getattr(item[1], where))]


def leaderboard_metrics() -> list[str]:
    """The registry's metrics on the report's leaderboard, in column order."""
    return _shown("leaderboard")


def score_table_metrics() -> list[str]:
    """The registry's metrics of scores_table.tsv, in column order (sorted by the first)."""
    return _shown("score_table")


def _subset_metrics(pred: np.ndarray, true: np.ndarray, top: np.ndarray,
                    reference: np.ndarray | None) -> dict[str, float]:
    values = {name: fn(pred, true, top) for name, fn in METRICS.items()}
    if reference is not None:
        values.update({name: fn(pred, true, reference) for name, fn in REFERENCE_METRICS.items()})
    return values


def ate_metrics(
    pred_ate: pd.DataFrame, true_ate: pd.DataFrame, subsets: dict[str, list[str]],
    reference: np.ndarray | None = None,
) -> pd.DataFrame:
    """Metrics (columns metric, subset, value) of a predicted vs the data ATE per subset.

    Rows (perturbations) and columns (genes) are aligned by inner join in the data's order;
    the top-20 genes of a perturbation are chosen on |data ATE| over the aligned genes.
    Subsets with no aligned perturbation, and metrics that cannot be computed (NaN), are
    left out. Rows come subset by subset (all/train/val/test first), metrics in fixed order.
    ``reference`` (one value per column of ``true_ate``) adds ``REFERENCE_METRICS``.
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
    ref = None
    if reference is not None:
        ref = pd.Series(np.asarray(reference, dtype=np.float64), index=true_ate.columns)
        ref = ref.loc[genes].to_numpy()
    position = pd.Series(np.arange(len(labels)), index=labels)

    records = []
    for name in _ordered(subsets):
        members = pd.Index(pd.unique(np.asarray(subsets[name], dtype=str)))
        idx = position.reindex(members).dropna().to_numpy(dtype=int)
        if idx.size == 0:
            continue
        idx.sort()  # the data's order, whatever order the subset was listed in
        values = _subset_metrics(pred[idx], true[idx], top[idx], ref)
        for metric, value in values.items():
            if np.isfinite(value):
                records.append((metric, name, value))
    return pd.DataFrame.from_records(records, columns=METRIC_COLUMNS)


def heldout_metrics(pred_ate: pd.DataFrame, truths: dict, subsets: dict[str, list[str]],
                    names=None, prefix: str = "") -> pd.DataFrame:
    """``ate_metrics`` of each subset against its own truth (``truth_by_split``: the subset's
    cells, ``subset_truth``), with the perturbed-mean reference of that truth. ``names``
    restricts the metrics (default all), ``prefix`` is put before each metric name."""
    frames = []
    for name in _ordered(subsets):
        truth = truths.get(subset_truth(name))
        if truth is None:
            continue
        true_ate, cells = truth
        reference = perturbed_reference(true_ate, cells)
        frames.append(ate_metrics(pred_ate, true_ate, {name: subsets[name]}, reference))
    frames = [f for f in frames if len(f)]
    table = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame(columns=METRIC_COLUMNS))
    if names is not None:
        table = table[table["metric"].isin(names)].reset_index(drop=True)
    return table.assign(metric=prefix + table["metric"].astype(str))


# The paper's (and the reference implementation's) four metrics, on all cells of each
# perturbation (training cells included) at 10,000 counts per predicted cell: kept as the
# labelled ``paper_*`` rows for the paper's tables only.
PAPER_METRICS = ("ate_pearson", "ate_r2", "ate_pearson_top20", "ate_r2_top20")
PAPER_PREFIX = "paper_"


def paper_metrics(pred_ate: pd.DataFrame, all_truth: tuple, subsets: dict) -> pd.DataFrame:
    """The ``paper_*`` rows: PAPER_METRICS of the paper's prediction against the all-cells
    data ATE on the all/train/val/test subsets."""
    plain = {k: v for k, v in subsets.items() if k in SUBSET_ORDER}
    truths = {s: all_truth for s in ("all", "train", "val", "test")}
    return heldout_metrics(pred_ate, truths, plain, PAPER_METRICS, PAPER_PREFIX)


def _ordered(subsets) -> list[str]:
    ordered = [s for s in SUBSET_ORDER if s in subsets]
    return ordered + sorted(s for s in subsets if s not in SUBSET_ORDER)


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


def combo_seen_subsets(labels_per_cell, split_per_cell, control: str) -> dict[str, list[str]]:
    """GEARS' tags for the test combinations: ``combo_seen{k}`` lists the combinations with
    test cells of which k components were seen in training as a single perturbation (have
    training cells under their own label). Empty tags are left out."""
    labels = np.asarray(labels_per_cell, dtype=str)
    split = np.asarray(split_per_cell, dtype=str)
    seen = set(labels[(split == "train") & (labels != control)])
    out: dict[str, list[str]] = {}
    for label in sorted(set(labels[(split == "test") & (labels != control)])):
        parts = components(label)
        if len(parts) < 2:
            continue
        out.setdefault(f"combo_seen{sum(p in seen for p in parts)}", []).append(label)
    return dict(sorted(out.items()))


def class_subsets(labels_per_cell, split_per_cell, classes_per_cell,
                  control: str) -> dict[str, list[str]]:
    """The test perturbations by their class (a simulation's ``obs["combination_class"]``,
    issue 22): {class: test labels of that class}, one subset per class that has test cells;
    the ``single`` and ``control`` labels are not classes."""
    frame = pd.DataFrame({"label": np.asarray(labels_per_cell, dtype=str),
                          "split": np.asarray(split_per_cell, dtype=str),
                          "cls": np.asarray(classes_per_cell, dtype=str)})
    test = frame[(frame["split"] == "test") & (frame["label"] != control)
                 & ~frame["cls"].isin(["single", "control", "", "nan"])]
    return {c: sorted(g["label"].unique()) for c, g in test.groupby("cls", sort=True)}


# --------------------------------------------------------------------------------------------
# Scores normalised between the best simple baseline and the replicate ceiling (issue 13)
# --------------------------------------------------------------------------------------------

def normalised_scores(table: pd.DataFrame, roles: Mapping[str, str],
                      differences: pd.DataFrame | None = None) -> pd.DataFrame:
    """Add ``normalised`` = (u - b) / (r - b) and ``normalised_note`` to a tidy metrics table.

    Per experiment x split x metric x subset: b is the best simple baseline (families whose
    role in ``roles``, {family: role} from the model registry, is "baseline"; best = highest,
    or lowest for a metric whose entry says lower_is_better; each model's value averaged over
    seeds), r the ceiling (role "ceiling", averaged over its models and seeds). 0 = no better
    than the best simple baseline, 1 = as good as a replicate. NaN with the reason in ``normalised_note`` when there is no baseline, no ceiling, or the
    ceiling is not better than the baseline.

    ``differences`` (``paired_bootstrap``'s table): a score is kept only where the bootstrap
    found the ceiling-to-baseline gap beyond its own noise (``discriminative``, test subset);
    elsewhere NaN with the note "not discriminative here" and the two numbers, or, for a
    metric or subset without a bootstrap, a note saying so.
    """
    out = table.copy()
    if out.empty or "family" not in out:
        out["normalised"], out["normalised_note"] = np.nan, ""
        return out
    keys = [k for k in ("experiment", "split", "metric", "subset") if k in out]
    family = out["family"].fillna("").astype(str)
    by_model = out.assign(family=family).groupby(keys + ["family", "model"], dropna=False)[
        "value"].mean().reset_index()
    role = by_model["family"].map(dict(roles))
    base = by_model[role == "baseline"].copy()
    base["oriented"] = np.where(base["metric"].map(lower_is_better), -1, 1) * base["value"]
    best = base.sort_values("oriented", kind="stable").groupby(keys, dropna=False).tail(1)
    best = best[keys + ["value"]].rename(columns={"value": "_b"})
    ceiling = by_model[role == "ceiling"].groupby(keys, dropna=False)[
        "value"].mean().rename("_r").reset_index()
    merged = out.merge(best, on=keys, how="left").merge(ceiling, on=keys, how="left")
    sign = np.where(merged["metric"].map(lower_is_better), -1.0, 1.0)
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
    if differences is not None:
        note = np.where(note == "", _gap_notes(merged, differences), note)
    out["normalised"] = np.where(note == "", value, np.nan)
    out["normalised_note"] = note
    return out


def _gap_notes(merged: pd.DataFrame, differences: pd.DataFrame) -> np.ndarray:
    """'' where the bootstrap found the gap discriminative, else why not (per row)."""
    gaps = {(str(r.split), r.metric): r for r in
            differences.drop_duplicates(["split", "metric"]).itertuples()}
    notes = []
    for split, metric, subset, b, r in zip(merged.get("split", ""), merged["metric"],
                                           merged["subset"], merged["_b"], merged["_r"]):
        gap = gaps.get((str(split), metric)) if subset == "test" else None
        if gap is None:
            notes.append("no bootstrap of the ceiling-to-baseline gap for this metric and "
                         "subset (test subset of ceiling.BOOTSTRAP_METRICS only)")
        elif not gap.discriminative:
            notes.append(f"not discriminative here: ceiling {r:.4g} vs best simple baseline "
                         f"{b:.4g}; the gap's 95% interval [{gap.gap_lo:.3g}, {gap.gap_hi:.3g}] "
                         "is not above 0")
        else:
            notes.append("")
    return np.asarray(notes, dtype=object)


def score_table(metrics: pd.DataFrame, subset: str = "test") -> pd.DataFrame:
    """One row per model x split of a normalised metrics table (mean over seeds, never over
    splits), raw and normalised value side by side per metric, on one subset; the ceiling's
    row included (metrics.tsv's ``normalised_note`` says why a normalised value is empty)."""
    part = metrics[metrics["subset"] == subset]
    shown = score_table_metrics()
    part = part[part["metric"].isin(shown)]
    if part.empty:
        return pd.DataFrame(columns=["model", "family", "split"])
    part = part.assign(split=part["split"].astype(str) if "split" in part else "")
    keys = ["model", "family", "split"]
    grouped = part.groupby(keys + ["metric"], dropna=False)[
        ["value", "normalised"]].mean().reset_index()
    wide = grouped.pivot(index=keys, columns="metric", values=["value", "normalised"])
    columns = {}
    for metric in [m for m in shown if m in set(grouped["metric"])]:
        columns[metric] = wide[("value", metric)]
        columns[f"{metric}_normalised"] = wide[("normalised", metric)]
    table = pd.DataFrame(columns).reset_index()
    first = shown[0] if shown[0] in table else table.columns[3]
    return table.sort_values(["split", first], ascending=[True, False],
                             kind="stable").reset_index(drop=True)
