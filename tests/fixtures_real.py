"""Tiny files shaped like the real downloads (same obs/var columns and storage), for tests and
the benchmark, plus the reference's Replogle filtering written the plain in-memory way.

Import from tests as ``from fixtures_real import ...`` (pytest puts tests/ on the path).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

RESOURCES = Path(__file__).resolve().parents[1] / "workflow" / "samsbench" / "data" / "resources"

# Targeted genes of the fixture: in the cluster list (several in annotated pathways) or not.
LISTED_TARGETS = ["EXOSC2", "LSM5", "CCNK", "RPS6", "GATA1", "DIS3", "MED12", "AARS"]
UNLISTED_TARGETS = ["A1BG", "TP53", "ZZZ3"]
DUPLICATED_PROGRAM_GENE = "MYC"  # one listed name on two var rows, as on the real file
UNLISTED_MEASURED = ["GAPDH", "ACTB", "TP53", "A1BG", "ZZZ3", "XIST"]

RAW_OBS_COLUMNS = [
    "gem_group", "gene", "gene_id", "transcript", "gene_transcript", "sgID_AB", "mitopercent",
    "UMI_count", "z_gemgroup_UMI", "core_scale_factor", "core_adjusted_UMI_count",
]
RAW_VAR_COLUMNS = [
    "gene_name", "chr", "start", "end", "class", "strand", "length", "in_matrix", "mean", "std",
    "cv", "fano",
]


def gene_list(name: str) -> set[str]:
    """Union of a comma-separated gene list file (lines starting with # are comments)."""
    genes = set()
    for line in (RESOURCES / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            genes.update(g.strip() for g in line.split(",") if g.strip())
    return genes


def cluster_genes() -> set[str]:
    return gene_list("replogle_perturbation_clusters.txt")


def program_genes() -> set[str]:
    return gene_list("replogle_feature_gene_programs.txt")


def pathway_genes() -> dict[str, list[str]]:
    return json.loads((RESOURCES / "replogle_pathways_uns.json").read_text())


def _ensembl(i: int) -> str:
    return f"ENSG{i:011d}"


def replogle_raw_obs(n_controls: int = 2500, cells_per_guide: int = 12, seed: int = 0,
                     n_filler: int = 0) -> pd.DataFrame:
    """obs of a raw GWPS-shaped file, rows in a random (file) order.

    Listed and unlisted targets each have one to three guide pairs, on both strands (the
    '+' strand ids contain a '+'); ``n_filler`` adds cells of unlisted genes (benchmark).
    """
    rng = np.random.default_rng(seed)
    rows = []
    targets = LISTED_TARGETS + UNLISTED_TARGETS
    for t, gene in enumerate(targets):
        for pair in range(1 + t % 3):
            strand = "+" if (t + pair) % 2 == 0 else "-"
            a = f"{gene}_{strand}_{1000 * t + 10 * pair}.23-P1P2"
            b = f"{gene}_{strand}_{1000 * t + 10 * pair + 5}.23-P1P2"
            rows += [(gene, _ensembl(t + 1), f"{a}|{b}")] * cells_per_guide
    for c in range(n_controls):
        pair = c % 37
        rows.append(("non-targeting", "non-targeting",
                     f"non-targeting_{pair:05d}|non-targeting_{(pair * 7) % 101:05d}"))
    for c in range(n_filler):
        gene = f"FILLER{c % 500}"
        rows.append((gene, _ensembl(10_000 + c % 500), f"{gene}_-_1.1-P1|{gene}_-_2.1-P1"))
    order = rng.permutation(len(rows))
    gene, gene_id, sgid = (np.array(col, dtype=object)[order] for col in zip(*rows))
    n = len(rows)
    gem = rng.integers(1, 50, size=n)
    transcript = np.where(gene == "non-targeting", "non-targeting", "P1P2")
    umi = rng.integers(2000, 30000, size=n).astype(np.float64)
    obs = pd.DataFrame(
        {
            "gem_group": gem,
            "gene": gene,
            "gene_id": gene_id,
            "transcript": transcript,
            "gene_transcript": [f"{i}_{g}_{t}_{i}" for i, g, t in zip(gene_id, gene, transcript)],
            "sgID_AB": sgid,
            "mitopercent": rng.uniform(0.01, 0.2, size=n),
            "UMI_count": umi,
            "z_gemgroup_UMI": rng.normal(size=n),
            "core_scale_factor": rng.uniform(0.5, 1.5, size=n),
            "core_adjusted_UMI_count": umi * 0.9,
        },
        index=[f"{_barcode(i)}-{g}" for i, g in enumerate(gem)],
    )
    return obs[RAW_OBS_COLUMNS]


def _barcode(i: int) -> str:
    letters = "ACGT"
    return "".join(letters[(i >> (2 * k)) & 3] for k in range(16))


def replogle_raw_var(n_program: int = 25, seed: int = 0, n_filler: int = 0) -> pd.DataFrame:
    """var of a raw file: some program genes, one listed name twice, some unlisted genes."""
    rng = np.random.default_rng(seed)
    program = sorted(program_genes() - {DUPLICATED_PROGRAM_GENE})
    names = (
        [program[i] for i in rng.choice(len(program), n_program, replace=False)]
        + [DUPLICATED_PROGRAM_GENE, DUPLICATED_PROGRAM_GENE]
        + UNLISTED_MEASURED
        + [f"FILLERG{i}" for i in range(n_filler)]
    )
    names = [names[i] for i in rng.permutation(len(names))]
    n = len(names)
    mean = rng.uniform(0.01, 5, size=n)
    var = pd.DataFrame(
        {
            "gene_name": names,
            "chr": rng.choice(["chr1", "chr2", "chrX"], size=n),
            "start": rng.integers(1, 10**8, size=n),
            "end": rng.integers(1, 10**8, size=n),
            "class": "gene_version10",
            "strand": rng.choice(["+", "-"], size=n),
            "length": rng.integers(100, 10**5, size=n),
            "in_matrix": True,
            "mean": mean,
            "std": mean * 1.2,
            "cv": rng.uniform(0.5, 3, size=n),
            "fano": rng.uniform(0.5, 3, size=n),
        },
        index=[_ensembl(50_000 + i) for i in range(n)],
    )
    return var[RAW_VAR_COLUMNS]


def write_replogle_raw(path, n_controls: int = 2500, cells_per_guide: int = 12, seed: int = 0,
                       x_format: str = "dense", compression: str | None = None,
                       legacy_obs: bool = False, n_filler: int = 0) -> Path:
    """A raw GWPS-shaped h5ad: dense float32 counts (or CSR), all of Replogle's columns.

    ``compression`` makes anndata write X chunked; ``legacy_obs`` rewrites obs in anndata 0.7's
    layout (categorical codes pointing into ``obs/__categories``); ``n_filler`` adds cells of
    unlisted genes, so that kept cells are sparse in the file as in the real one.
    """
    obs = replogle_raw_obs(n_controls, cells_per_guide, seed, n_filler=n_filler)
    var = replogle_raw_var(seed=seed)
    rng = np.random.default_rng(seed + 1)
    X = rng.poisson(rng.uniform(0.05, 3, size=var.shape[0]), size=(len(obs), len(var)))
    X = X.astype(np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(X) if x_format == "csr" else X, obs=obs, var=var)
    path = Path(path)
    adata.write_h5ad(path, compression=compression)
    if legacy_obs:
        _rewrite_obs_as_anndata_07(path)
    return path


def _rewrite_obs_as_anndata_07(path: Path) -> None:
    obs = ad.read_h5ad(path, backed="r").obs.copy()
    with h5py.File(path, "r+") as f:
        del f["obs"]
        group = f.create_group("obs")
        group.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.1.0",
                            "_index": "index", "column-order": list(obs.columns)})
        strings = h5py.string_dtype()
        group.create_dataset("index", data=np.asarray(obs.index, dtype=object), dtype=strings)
        categories = group.create_group("__categories")
        for name in obs.columns:
            column = obs[name]
            if isinstance(column.dtype, pd.CategoricalDtype):
                cats = categories.create_dataset(
                    name, data=np.asarray(column.cat.categories, dtype=object), dtype=strings
                )
                codes = group.create_dataset(name, data=column.cat.codes.to_numpy())
                codes.attrs["categories"] = cats.ref
            else:
                group.create_dataset(name, data=column.to_numpy())


def reference_filter_replogle(raw: ad.AnnData) -> ad.AnnData:
    """The preprocessing notebook, step by step, on an in-memory raw AnnData."""
    raw = raw.copy()
    keep_gene = raw.obs["gene"].isin(cluster_genes() | {"non-targeting"})
    raw = raw[keep_gene.to_numpy()].copy()
    control_idx = np.where(raw.obs["gene"] == "non-targeting")[0]
    np.random.seed(0)
    np.random.shuffle(control_idx)
    drop = raw.obs_names[control_idx[2000:]]
    raw = raw[~raw.obs_names.isin(drop)].copy()
    raw = raw[:, raw.var["gene_name"].isin(program_genes()).to_numpy()].copy()
    raw.uns["pathways"] = pathway_genes()
    return raw


# ----------------------------------------------------------------------------- Norman


NORMAN_GENES = ["KLF1", "MAP2K6", "CEBPA", "FOXA1", "SET", "BAK1", "CBL", "CBLB"]
NORMAN_COMBOS = [("KLF1", "MAP2K6"), ("CEBPA", "FOXA1"), ("CBL", "CBLB"), ("SET", "KLF1"),
                 ("BAK1", "CBL"), ("FOXA1", "MAP2K6")]


def _identity(a: str, b: str) -> str:
    return f"{a}_{b}__{a}_{b}"


def write_norman_scpert(path, cells_per_label: int = 15, n_controls: int = 40, n_genes: int = 60,
                        n_hvg: int = 25, seed: int = 0) -> Path:
    """An sc-pert-processed-shaped Norman file: log-normalised X, counts in layers["counts"]
    (CSR), var["highly_variable"], guide_identity, guide_ids and one guide_<GENE> column per
    target. One combination also appears with its guides in the other order."""
    rng = np.random.default_rng(seed)
    rows = []  # (guide_identity, genes)
    for c in range(n_controls):
        rows.append((_identity(f"NegCtrl{c % 3}", "NegCtrl0"), ()))
    for gene in NORMAN_GENES:
        rows += [(_identity(gene, "NegCtrl0"), (gene,))] * cells_per_label
        rows += [(_identity("NegCtrl0", gene), (gene,))] * 2
    for a, b in NORMAN_COMBOS:
        rows += [(_identity(a, b), (a, b))] * cells_per_label
    rows += [(_identity("MAP2K6", "KLF1"), ("MAP2K6", "KLF1"))] * 3
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    n = len(rows)

    counts = rng.poisson(rng.uniform(0.05, 4, size=n_genes), size=(n, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    lib = counts.sum(1, keepdims=True)
    logged = np.log1p(counts / lib * 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {
            "guide_identity": [r[0] for r in rows],
            "guide_ids": [",".join(r[1]) for r in rows],
            "n_genes": (counts > 0).sum(1),
            "percent_mito": rng.uniform(0, 0.1, size=n),
            "leiden": rng.choice(["0", "1", "2"], size=n),
        },
        index=[f"cell{i}-{_barcode(i)}" for i in range(n)],
    )
    for gene in NORMAN_GENES:
        obs[f"guide_{gene}"] = [float(gene in r[1]) for r in rows]
    symbols = [f"GENE{i}" for i in range(n_genes)]
    hv = np.zeros(n_genes, dtype=bool)
    hv[rng.choice(n_genes, n_hvg, replace=False)] = True
    var = pd.DataFrame(
        {
            "gene_ids": [_ensembl(i) for i in range(n_genes)],
            "highly_variable": hv,
            "means": counts.mean(0),
            "dispersions": rng.uniform(0, 2, size=n_genes),
        },
        index=symbols,
    )
    adata = ad.AnnData(X=sp.csr_matrix(logged), obs=obs, var=var,
                       layers={"counts": sp.csr_matrix(counts)})
    adata.obsm["X_pca"] = rng.normal(size=(n, 5)).astype(np.float32)
    adata.uns["leiden"] = {"params": {"resolution": 1.0}}
    path = Path(path)
    adata.write_h5ad(path)
    return path


def norman_shaped_labels(n_singles: int = 105, n_pairs: int = 131, n_controls: int = 4000,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell perturbation labels and guide identities with Norman's proportions: 105
    singles, 131 gene pairs with 40-200 cells each, one of them under both guide orders (so
    132 guide identities, as in the real file), controls; file order random."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i:03d}" for i in range(n_singles)]
    pairs = set()
    while len(pairs) < n_pairs:
        a, b = sorted(rng.choice(genes, 2, replace=False))
        pairs.add((a, b))
    labels, identities = [], []
    for i in range(n_controls):
        labels.append("non-targeting")
        identities.append(_identity(f"NegCtrl{i % 5}", "NegCtrl0"))
    for gene in genes:
        k = int(rng.integers(60, 250))
        labels += [gene] * k
        identities += [_identity(gene, "NegCtrl0")] * k
    for p, (a, b) in enumerate(sorted(pairs)):
        k = int(rng.integers(40, 200))
        labels += [f"{a}+{b}"] * k
        if p == 0:  # this pair was also cloned with its guides swapped
            identities += [_identity(a, b)] * (k // 2) + [_identity(b, a)] * (k - k // 2)
        else:
            identities += [_identity(a, b)] * k
    order = rng.permutation(len(labels))
    return np.array(labels, dtype=object)[order], np.array(identities, dtype=object)[order]
