"""Replogle et al. 2022 genome-wide K562 screen, filtered as in the SAMS-VAE paper.

Two routes to the same contract file:

(a) ``prepare_from_prepared``: the authors' ``replogle.h5ad`` (already filtered);
(b) ``prepare_from_raw``: Replogle's raw ``K562_gwps_raw_singlecell_01.h5ad`` (~60 GB, dense
    float32), streamed in row blocks: keep the cells of the 681 cluster genes plus 2,000
    non-targeting cells drawn as the reference draws them, and the 1,187 var rows whose
    ``gene_name`` is one of the 1,186 program genes.

The treatment is the guide pair ``sgID_AB``; every pair containing ``non-targeting`` becomes the
control label. Guide ids carry the target strand, ``GENE_+_123.23-P1P2``, and ``+`` is the
contract's combination separator, so in ``obs["perturbation"]`` a ``+`` is written ``plus``
(``GENE_plus_123.23-P1P2``); ``obs["sgID_AB"]`` keeps the original. Gene symbols duplicated
among the kept columns (one on the real file) get their original var index (Ensembl id)
appended, ``SYMBOL_ENSG...``; the original index is kept in ``var["gene_id"]``.
``uns["pathways"]`` lists, for each of the 8 annotated complexes, the perturbation labels whose
target gene belongs to it (the contract's form); ``uns["pathway_genes"]`` keeps the reference's
gene lists.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from samsbench.data import contract
from samsbench.data._h5ad_io import Frame, RowMatrix, read_elem, unique_names

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).with_name("resources")
CONTROL = contract.DEFAULT_CONTROL
N_CONTROLS = 2000
CONTROL_SEED = 0
_OBS_SCAN_ROWS = 1 << 18


def _read_rows(name: str) -> list[list[str]]:
    with open(RESOURCES / name) as handle:
        return [
            [gene.strip() for gene in line.split(",") if gene.strip()]
            for line in handle
            if line.strip() and not line.startswith("#")
        ]


@lru_cache(maxsize=None)
def target_genes() -> frozenset[str]:
    """The 681 perturbed genes kept (union of Replogle's 60 perturbation clusters)."""
    return frozenset(g for row in _read_rows("replogle_perturbation_clusters.txt") for g in row)


@lru_cache(maxsize=None)
def program_genes() -> frozenset[str]:
    """The 1,186 measured gene names kept (union of Replogle's 38 expression programs)."""
    return frozenset(g for row in _read_rows("replogle_feature_gene_programs.txt") for g in row)


def pathway_genes() -> dict[str, list[str]]:
    """The reference's ``uns["pathways"]``: 8 annotated clusters, as gene lists."""
    with open(RESOURCES / "replogle_pathways_uns.json") as handle:
        return json.load(handle)


def sample_controls(control_positions, n: int = N_CONTROLS, seed: int = CONTROL_SEED):
    """The reference's control draw: legacy NumPy seed, shuffle positions, keep the first n.

    ``RandomState(seed)`` is the generator that ``np.random.seed(seed)`` resets, so this draws
    the same cells without touching the global state. Returned sorted (file order).
    """
    shuffled = np.array(control_positions, dtype=np.int64, copy=True)
    np.random.RandomState(seed).shuffle(shuffled)
    if len(shuffled) < n:
        log.warning("only %d non-targeting cells; keeping all of them", len(shuffled))
    return np.sort(shuffled[:n])


def perturbation_labels(sgid_ab) -> np.ndarray:
    """Contract labels from guide pairs: control pairs merged, strand '+' written 'plus'."""
    guides = pd.Series(np.asarray(sgid_ab, dtype=object)).astype(str)
    is_control = guides.str.contains(CONTROL, regex=False)
    labels = np.where(is_control, CONTROL, guides.str.replace("+", "plus", regex=False))
    pairs = pd.DataFrame({"label": labels, "guide": guides.to_numpy()})[~is_control.to_numpy()]
    clashes = pairs.drop_duplicates().groupby("label")["guide"].nunique()
    if (clashes > 1).any():
        raise ValueError(f"guide pairs collide after renaming: {list(clashes[clashes > 1].index)}")
    return labels


def to_contract(X, obs: pd.DataFrame, var: pd.DataFrame) -> ad.AnnData:
    """The shared last step of both routes: labels, unique gene names, uns, CSR float32."""
    for column in ("sgID_AB", "gene"):
        if column not in obs.columns:
            raise contract.ContractError(
                f'a Replogle file needs obs["{column}"] (found: {list(obs.columns)})'
            )
    obs = obs.copy()
    obs.index = pd.Index(np.asarray(obs.index, dtype=str))
    labels = perturbation_labels(obs["sgID_AB"])
    genes = np.where(labels == CONTROL, CONTROL, np.asarray(obs["gene"], dtype=str))
    obs["gene"] = genes
    obs[contract.PERTURBATION_KEY] = labels
    for name in obs.columns:  # one normal form for strings, whichever route read them
        if isinstance(obs[name].dtype, pd.CategoricalDtype) or obs[name].dtype == object:
            obs[name] = pd.Categorical(obs[name].to_numpy())

    var = var.copy()
    original_index = np.asarray(var.index, dtype=str)
    symbols = var["gene_name"].astype(str) if "gene_name" in var.columns else original_index
    if "gene_id" not in var.columns:
        var["gene_id"] = original_index
    var.index = pd.Index(unique_names(symbols, original_index))
    for name in var.columns:
        if isinstance(var[name].dtype, pd.CategoricalDtype) or var[name].dtype == object:
            var[name] = pd.Categorical(var[name].to_numpy())

    gene_lists = pathway_genes()
    pairs = pd.DataFrame({"label": labels, "gene": genes}).drop_duplicates()
    pathways = {
        name: sorted(pairs.loc[pairs["gene"].isin(members) & (pairs["label"] != CONTROL), "label"])
        for name, members in gene_lists.items()
    }
    adata = ad.AnnData(
        X=sp.csr_matrix(X, dtype=np.float32),
        obs=obs,
        var=var,
        uns={"control_label": CONTROL, "pathways": pathways, "pathway_genes": gene_lists},
    )
    if not adata.obs_names.is_unique:
        log.warning("cell names are not unique; making them unique")
        adata.obs_names_make_unique()
    return adata


def _summarise(adata: ad.AnnData, route: str) -> None:
    labels = adata.obs[contract.PERTURBATION_KEY]
    log.info(
        "Replogle (%s): %d cells x %d genes, %d perturbations (guide pairs) of %d genes, "
        "%d control cells",
        route,
        adata.n_obs,
        adata.n_vars,
        labels[labels != CONTROL].nunique(),
        adata.obs["gene"][labels != CONTROL].nunique(),
        int((labels == CONTROL).sum()),
    )


def prepare_from_prepared(in_path, out_path) -> ad.AnnData:
    """Route (a): the authors' filtered ``replogle.h5ad`` to a contract file."""
    source = ad.read_h5ad(in_path)
    adata = to_contract(source.X, source.obs, source.var)
    _summarise(adata, "authors' prepared file")
    contract.write(adata, out_path)
    return adata


def select_cells(frame: Frame, n_controls: int = N_CONTROLS, seed: int = CONTROL_SEED):
    """Boolean mask over the file's cells: targets of the cluster list plus sampled controls."""
    targets = list(target_genes())
    keep = np.zeros(frame.n_rows, dtype=bool)
    controls = []
    for start in range(0, frame.n_rows, _OBS_SCAN_ROWS):
        stop = min(start + _OBS_SCAN_ROWS, frame.n_rows)
        genes = np.asarray(frame.column("gene", start, stop), dtype=str)
        keep[start:stop] = np.isin(genes, targets)
        controls.append(start + np.flatnonzero(genes == CONTROL))
    positions = np.concatenate(controls) if controls else np.zeros(0, dtype=np.int64)
    keep[sample_controls(positions, n_controls, seed)] = True
    log.info(
        "kept %d of %d cells (%d of %d non-targeting)",
        int(keep.sum()), frame.n_rows, min(n_controls, len(positions)), len(positions),
    )
    return keep


def prepare_from_raw(
    in_path,
    out_path,
    chunk_rows: int | None = None,
    n_controls: int = N_CONTROLS,
    seed: int = CONTROL_SEED,
) -> ad.AnnData:
    """Route (b): Replogle's raw genome-wide file, streamed in blocks of ``chunk_rows`` rows.

    Memory holds one block of X plus the kept cells' counts on the kept genes: it does not
    grow with the size of the raw file.
    """
    in_path = os.fspath(in_path)
    with h5py.File(in_path, "r") as handle:
        frame = Frame(handle["obs"])
        matrix = RowMatrix(handle["X"])
        if matrix.shape[0] != frame.n_rows:
            raise contract.ContractError(
                f"{in_path}: X has {matrix.shape[0]} rows but obs has {frame.n_rows}"
            )
        var = read_elem(handle["var"])
        if "gene_name" not in var.columns:
            raise contract.ContractError(f'{in_path}: var has no "gene_name" column')
        cols = np.flatnonzero(var["gene_name"].astype(str).isin(program_genes()).to_numpy())
        log.info("kept %d of %d genes", len(cols), matrix.shape[1])
        keep = select_cells(frame, n_controls, seed)

        step = chunk_rows or matrix.default_chunk_rows()
        blocks, obs_parts = [], []
        for start in range(0, frame.n_rows, step):
            stop = min(start + step, frame.n_rows)
            local = np.flatnonzero(keep[start:stop])
            if len(local) == 0:
                continue
            blocks.append(matrix.read(start, stop, start + local, cols))
            obs_parts.append(frame.rows(start, stop, local))
        obs = frame.finish(obs_parts)
    X = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(cols)))
    del blocks
    adata = to_contract(X, obs, var.iloc[cols])
    _summarise(adata, "raw genome-wide file")
    contract.write(adata, out_path)
    return adata
