"""McFaline-Figueroa et al. 2023 CRISPRi cells of PerturBench's ``devel.h5ad`` to the contract.

PerturBench ships a small development file (``src/perturbench/data/resources/devel.h5ad`` in
altoslabs/perturbench) holding a few thousand cells of several screens, among them the
McFaline-Figueroa 2023 glioblastoma lines A172, T98G and U87MG. Its X is not counts: PerturBench's
preprocessing runs ``scanpy.pp.normalize_total`` (each cell scaled to a common total over all
genes kept at that point) and then ``log1p`` before subsetting genes, so a stored value is
``log(1 + c * u_i)`` with the cell's integer count ``c`` and an unknown per-cell unit ``u_i``.

``recover_counts`` inverts that: ``v = expm1(x) = c * u_i``, so within a cell the values are
integer multiples of ``u_i``. The unit is the smallest value whose multiples give every value
(the cell's smallest value divided by the smallest k = 1, 2, ... for which all ratios round
within a tolerance), refined by least squares over all of the cell's values. This assumes that
a cell's counts over the kept genes have no common factor above 1; it holds for every cell of the
reference copy (each has a count of 1 among the 500 genes). A cell that fits no unit is an
error naming the cell.

``prepare_mcfaline`` selects the McFaline cells (``obs["dataset"] == "mcfaline23"``, else the
three cell lines by ``obs["cell_type"]``), recovers counts, labels cells by the knocked-down gene
(PerturBench's control ``control`` becomes ``non-targeting``), keeps the cell line as
``obs["cell_line"]`` (upper case) and, when ``counts_sha256`` is given, checks the recovered
matrix against it (``counts_sha256``: see that function for what is hashed).
"""

from __future__ import annotations

import hashlib
import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from samsbench.data import contract

log = logging.getLogger(__name__)

DATASET_VALUE = "mcfaline23"
CELL_LINES = ("A172", "T98G", "U87MG")
PERTURBENCH_CONTROL = "control"
MAX_MULTIPLE = 64  # the largest count the cell's smallest value is tried as
ROUND_TOL = 0.01  # |ratio - round(ratio)| allowed; float32 log1p values keep ~1e-7 relative


class RecoveryError(ValueError):
    """Normalised values that are not integer multiples of one unit per cell."""


def normalise_like_perturbench(counts, target_sum: float | None = None) -> sp.csr_matrix:
    """log1p(normalize_total(counts)) as scanpy computes it, stored float32 (for tests and docs).

    ``target_sum`` defaults to the median of the cells' totals, scanpy's default.
    """
    X = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    if target_sum is None:
        target_sum = float(np.median(totals[totals > 0]))
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X.data *= np.repeat(scale, np.diff(X.indptr))
    X.data = np.log1p(X.data)
    return sp.csr_matrix(X, dtype=np.float32)


def _cell_unit(values: np.ndarray) -> float | None:
    """The unit u with values = integers * u and the smallest such integers (None if none)."""
    smallest = float(values.min())
    for k in range(1, MAX_MULTIPLE + 1):
        ratios = values / (smallest / k)
        if np.max(np.abs(ratios - np.round(ratios))) <= ROUND_TOL:
            n = np.round(ratios)
            return float(values @ n / (n @ n))  # least squares over every value of the cell
    return None


def recover_counts(X, obs_names=None) -> sp.csr_matrix:
    """Integer counts (CSR int32) from log1p(normalize_total(counts)) values; see the module."""
    X = sp.csr_matrix(X)
    data = np.asarray(X.data, dtype=np.float64)
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
        raise RecoveryError("X has negative or non-finite values; expected log1p-normalised data")
    values = np.expm1(data)
    counts = np.zeros(values.shape, dtype=np.int64)
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        row = values[lo:hi]
        nonzero = row > 0
        if not nonzero.any():
            continue
        unit = _cell_unit(row[nonzero])
        if unit is None:
            name = obs_names[i] if obs_names is not None else i
            raise RecoveryError(
                f"cell {name!r}: its values are not integer multiples of one unit (up to "
                f"{MAX_MULTIPLE} x its smallest value); is X log1p(normalize_total(counts))?"
            )
        counts[lo:hi] = np.round(row / unit)
    out = sp.csr_matrix((counts.astype(np.int32), X.indices.copy(), X.indptr.copy()),
                        shape=X.shape)
    out.eliminate_zeros()
    return out


def counts_sha256(adata: ad.AnnData) -> str:
    """sha256 of the counts in a fixed order: genes sorted by name, cells sorted by obs name.

    Hashed bytes: the sorted gene names and cell names (each newline-terminated, UTF-8), then
    the dense counts as little-endian int32 in that row/column order. Independent of storage
    (sparse or dense, dtype) and of the order the reader happens to keep.
    """
    genes = np.asarray(adata.var_names, dtype=str)
    cells = np.asarray(adata.obs_names, dtype=str)
    g_order, c_order = np.argsort(genes, kind="stable"), np.argsort(cells, kind="stable")
    X = adata.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    dense = np.ascontiguousarray(np.asarray(X)[np.ix_(c_order, g_order)]).astype("<i4")
    digest = hashlib.sha256()
    for name in genes[g_order]:
        digest.update(f"{name}\n".encode())
    for name in cells[c_order]:
        digest.update(f"{name}\n".encode())
    digest.update(dense.tobytes())
    return digest.hexdigest()


def check_counts_sha256(adata: ad.AnnData, expected: str | None, where: str) -> None:
    if not expected:
        return
    found = counts_sha256(adata)
    if found != expected.strip().lower():
        raise contract.ContractError(
            f"{where}: the counts' sha256 is {found}, expected {expected} (counts_sha256 in "
            "config.yaml); the file is not the one the experiment was pinned to"
        )


def _select(adata: ad.AnnData, dataset_value: str) -> np.ndarray:
    obs = adata.obs
    if "dataset" in obs.columns:
        keep = obs["dataset"].astype(str).to_numpy() == dataset_value
    elif "cell_type" in obs.columns:
        keep = obs["cell_type"].astype(str).str.upper().isin(CELL_LINES).to_numpy()
    else:
        raise contract.ContractError(
            'devel.h5ad: obs has neither "dataset" nor "cell_type"; cannot find the '
            f"McFaline-Figueroa cells (columns: {list(obs.columns)[:10]})"
        )
    if "treatment" in obs.columns:  # drug-treated cells of the gene x environment screen
        keep &= obs["treatment"].astype(str).isin(["none", "nan"]).to_numpy()
    if not keep.any():
        raise contract.ContractError(f"devel.h5ad: no cell of dataset {dataset_value!r}")
    return keep


def prepare_mcfaline(in_path, out_path, dataset_value: str = DATASET_VALUE,
                     counts_sha256_expected: str | None = None) -> ad.AnnData:
    """Write the McFaline-Figueroa cells of PerturBench's devel.h5ad as a contract file."""
    src = ad.read_h5ad(in_path)
    for column in ("condition", "cell_type"):
        if column not in src.obs.columns:
            raise contract.ContractError(
                f"{in_path}: obs has no {column!r} column (found {list(src.obs.columns)[:10]})"
            )
    src = src[_select(src, dataset_value)].copy()
    if "counts" in src.layers:  # a copy that kept raw counts needs no recovery
        counts = sp.csr_matrix(src.layers["counts"]).astype(np.int32)
    else:
        counts = recover_counts(src.X, src.obs_names)
    genes = (src.var["gene_symbol"].astype(str).to_numpy() if "gene_symbol" in src.var.columns
             else np.asarray(src.var_names, dtype=str))
    labels = src.obs["condition"].astype(str).replace(PERTURBENCH_CONTROL,
                                                      contract.DEFAULT_CONTROL)
    obs = pd.DataFrame(
        {
            contract.PERTURBATION_KEY: labels.to_numpy(),
            "cell_line": src.obs["cell_type"].astype(str).str.upper().to_numpy(),
        },
        index=pd.Index(np.asarray(src.obs_names, dtype=str)),
    )
    if "perturbation_type" in src.obs.columns:
        obs["perturbation_type"] = src.obs["perturbation_type"].astype(str).to_numpy()
    for column in ("perturbation", "cell_line", "perturbation_type"):
        if column in obs.columns:
            obs[column] = obs[column].astype("category")
    out = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    out.uns["control_label"] = contract.DEFAULT_CONTROL
    out.uns["source"] = (
        "McFaline-Figueroa et al. 2023 CRISPRi cells of PerturBench devel.h5ad "
        "(altoslabs/perturbench); integer counts recovered from log1p(normalize_total(X))"
    )
    check_counts_sha256(out, counts_sha256_expected, str(in_path))
    n_zero = int((np.asarray(counts.sum(axis=0)).ravel() == 0).sum())
    log.info("McFaline-Figueroa: %d cells x %d genes (%d genes zero in every cell), lines %s",
             out.n_obs, out.n_vars, n_zero, sorted(set(obs["cell_line"])))
    contract.write(out, out_path)
    return out
