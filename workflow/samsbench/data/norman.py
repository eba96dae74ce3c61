"""Norman et al. 2019 CRISPRa screen (sc-pert's processed file) to the AnnData contract.

X becomes the raw counts of ``layers["counts"]`` on the highly variable genes. The perturbation
of a cell is read from the one-hot ``guide_*`` obs columns (every column whose name contains
``guide_`` except ``guide_identity`` and ``guide_ids``, as the reference does): the target genes
whose column is set, sorted and joined by ``+`` (``KLF1+MAP2K6``); no guide is the control
``non-targeting``. ``guide_identity`` stays in obs (the reference's split groups combinations by
it), with ``num_guides`` added. Whether a combination is modelled as the sum of its singles or
as its own perturbation is the model's choice, made later from these labels.
"""

from __future__ import annotations

import logging
import os

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from samsbench.data import contract
from samsbench.data._h5ad_io import RowMatrix, read_elem, unique_names

log = logging.getLogger(__name__)

CONTROL = contract.DEFAULT_CONTROL
NOT_GUIDE_COLUMNS = ("guide_identity", "guide_ids")


def guide_columns(obs: pd.DataFrame) -> list[str]:
    return [c for c in obs.columns if "guide_" in c and c not in NOT_GUIDE_COLUMNS]


def _as_indicator(values: pd.Series) -> np.ndarray:
    """A 0/1 guide column (stored as numbers, booleans or their strings) as booleans."""
    text = values.astype(str).str.strip().str.lower()
    mapped = text.map({"1": True, "1.0": True, "true": True, "0": False, "0.0": False,
                       "false": False})
    if mapped.isna().any():
        bad = sorted(set(text[mapped.isna()]))[:5]
        raise contract.ContractError(
            f"guide column {values.name!r} must be 0/1, found values like {bad}"
        )
    return mapped.to_numpy(dtype=bool)


def perturbation_labels(obs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: the sorted target genes joined by '+' (control when none), and their number."""
    columns = guide_columns(obs)
    if not columns:
        raise contract.ContractError(
            f"no guide_* columns in obs (found: {list(obs.columns)[:10]}...)"
        )
    genes = np.array([c.split("guide_", 1)[1] for c in columns], dtype=object)
    indicators = np.column_stack([_as_indicator(obs[c]) for c in columns])
    order = np.argsort(genes)
    genes, indicators = genes[order], indicators[:, order]
    # Few distinct guide patterns: label each pattern once.
    patterns, inverse = np.unique(indicators, axis=0, return_inverse=True)
    names = [contract.COMBINATION_SEP.join(genes[p]) or CONTROL for p in patterns]
    labels = np.asarray(names, dtype=object)[np.ravel(inverse)]
    return labels, indicators.sum(axis=1)


def prepare_norman(in_path, out_path, highly_variable_only: bool = True,
                   chunk_rows: int = 8192) -> ad.AnnData:
    """sc-pert's processed Norman file to a contract file (raw counts, HVGs, gene labels)."""
    in_path = os.fspath(in_path)
    with h5py.File(in_path, "r") as handle:
        obs = read_elem(handle["obs"])
        var = read_elem(handle["var"])
        if "layers" not in handle or "counts" not in handle["layers"]:
            raise contract.ContractError(
                f'{in_path}: no layers["counts"]; the Norman file must carry raw counts there'
            )
        if highly_variable_only:
            if "highly_variable" not in var.columns:
                raise contract.ContractError(f'{in_path}: var has no "highly_variable" column')
            cols = np.flatnonzero(var["highly_variable"].astype(bool).to_numpy())
        else:
            cols = np.arange(var.shape[0])
        counts = RowMatrix(handle["layers"]["counts"])
        n = counts.shape[0]
        # Row blocks keep only the selected genes, so the full matrix is never in memory.
        blocks = [
            counts.read(start, min(start + chunk_rows, n), cols=cols)
            for start in range(0, n, chunk_rows)
        ]
    X = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(cols)))
    del blocks

    labels, num_guides = perturbation_labels(obs)
    obs = obs.copy()
    obs.index = pd.Index(np.asarray(obs.index, dtype=str))
    obs["num_guides"] = num_guides
    obs[contract.PERTURBATION_KEY] = pd.Categorical(labels)
    var = var.iloc[cols].copy()
    ids = var["gene_ids"] if "gene_ids" in var.columns else var.index
    var.index = pd.Index(unique_names(var.index, ids))
    adata = ad.AnnData(X=X, obs=obs, var=var, uns={"control_label": CONTROL})
    if not adata.obs_names.is_unique:
        log.warning("cell names are not unique; making them unique")
        adata.obs_names_make_unique()

    per_kind = pd.Series(num_guides).value_counts().sort_index()
    log.info(
        "Norman: %d cells x %d genes%s; %d perturbations (%d combinations); cells by number "
        "of guides: %s",
        adata.n_obs,
        adata.n_vars,
        " (highly variable)" if highly_variable_only else "",
        len(set(labels)) - (CONTROL in set(labels)),
        sum(contract.COMBINATION_SEP in label for label in set(labels)),
        per_kind.to_dict(),
    )
    contract.write(adata, out_path)
    return adata
