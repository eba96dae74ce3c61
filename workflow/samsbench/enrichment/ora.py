"""Over-representation analysis (ORA) per latent dimension of a learned mask.

The targets of the perturbations whose mask probability passes a threshold are tested with
gseapy's offline hypergeometric test against each library, with the perturbed target genes of
the model as background.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from samsbench.enrichment.gene_sets import normalise_library

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
MIN_SET_SIZE = 3
# Columns of one run's enrichment table, before the run's identity (model, split, seed).
COLUMNS = ["library", "latent_dim", "term", "overlap", "set_size", "pvalue", "fdr",
           "query_size", "background_size", "genes"]


def _bh(pvalues: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    return false_discovery_control(pvalues, method="bh") if len(pvalues) else pvalues


def ora(query: Iterable[str], sets: Mapping[str, set[str]], background: Iterable[str]):
    """One over-representation test of ``query`` against every set, within ``background``.

    The hypergeometric p-values come from gseapy's offline ``enrich``. gseapy corrects only
    over the sets that overlap the query; here the BH family is every set offered (a set with
    no overlap has p = 1), which is the honest multiple-testing burden of the library.
    Returns term, overlap, set_size, pvalue, fdr, genes for the overlapping sets.
    """
    import gseapy

    background = sorted(set(background))
    query = sorted(set(query) & set(background))
    cols = ["term", "overlap", "set_size", "pvalue", "fdr", "genes"]
    qset = set(query)
    if not query or not any(qset & set(g) for g in sets.values()):
        # nothing can overlap; gseapy would log an error ("No hits") for this normal case
        return pd.DataFrame(columns=cols)
    enr = gseapy.enrich(
        gene_list=query,
        gene_sets={t: sorted(g) for t, g in sets.items()},
        background=background,
        outdir=None,
        no_plot=True,
        verbose=False,
    )
    res = getattr(enr, "res2d", None)
    if res is None or len(res) == 0:
        return pd.DataFrame(columns=cols)
    counts = res["Overlap"].str.split("/", expand=True).astype(int)
    out = pd.DataFrame(
        {
            "term": res["Term"].astype(str).to_numpy(),
            "overlap": counts[0].to_numpy(),
            "set_size": counts[1].to_numpy(),
            "pvalue": res["P-value"].astype(float).to_numpy(),
            # gseapy joins the overlap in set order, which changes with the process's hash
            # seed; sorted, the table is the same in every process
            "genes": [";".join(sorted(g.split(";"))) for g in res["Genes"].astype(str)],
        }
    )
    # BH over all offered sets: overlapping ones with their p, the rest at p = 1.
    p_all = np.concatenate([out["pvalue"].to_numpy(), np.ones(len(sets) - len(out))])
    out["fdr"] = _bh(p_all)[: len(out)]
    return out.sort_values(["pvalue", "term"], ignore_index=True)[cols]


def restrict_library(sets, background, min_set_size=MIN_SET_SIZE) -> dict[str, set[str]]:
    """Sets cut to the background; those with fewer than ``min_set_size`` genes left go."""
    background = set(background)
    out = {t: g & background for t, g in normalise_library(sets).items()}
    return {t: g for t, g in out.items() if len(g) >= min_set_size}


def active_genes(mask_prob: pd.DataFrame, targets: pd.Series, threshold=DEFAULT_THRESHOLD):
    """{latent dim: target genes of the perturbations with mask probability > threshold}."""
    active = mask_prob.to_numpy() > threshold
    genes = targets.reindex(mask_prob.index).to_numpy()
    return {
        dim: sorted({g for i in np.flatnonzero(active[:, j]) for g in genes[i]})
        for j, dim in enumerate(mask_prob.columns)
    }


def enrich_masks(
    mask_prob: pd.DataFrame,
    targets: pd.Series,
    libraries: Mapping[str, Mapping[str, Iterable[str]]],
    threshold: float = DEFAULT_THRESHOLD,
    min_set_size: int = MIN_SET_SIZE,
) -> pd.DataFrame:
    """ORA of every latent dimension's active perturbations against every library.

    ``mask_prob``: perturbations × latent dims. ``targets``: perturbation → list of target
    genes. The background is all target genes of the model's perturbations.
    """
    background = sorted({g for gs in targets.reindex(mask_prob.index) for g in gs})
    per_dim = active_genes(mask_prob, targets, threshold)
    frames = []
    for lib, sets in libraries.items():
        usable = restrict_library(sets, background, min_set_size)
        if not usable:
            log.warning("library %s: no set has %d genes in the background", lib, min_set_size)
            continue
        for dim, query in per_dim.items():
            res = ora(query, usable, background)
            if len(res):
                res.insert(0, "latent_dim", dim)
                res.insert(0, "library", lib)
                res["query_size"] = len(query)
                res["background_size"] = len(background)
                frames.append(res)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def fraction_dims_enriched(table: pd.DataFrame, n_dims: int, alpha=0.05) -> float:
    """Share of latent dims with at least one term at FDR < alpha (the negative-control score)."""
    hit = table.loc[table["fdr"] < alpha, "latent_dim"].nunique() if len(table) else 0
    return hit / max(n_dims, 1)


def top_hits(table: pd.DataFrame) -> pd.DataFrame:
    """The best term (lowest p, then FDR) per run, library and latent dim."""
    keys = [c for c in ("model", "split", "seed", "library", "latent_dim") if c in table]
    ordered = table.sort_values(
        keys + ["pvalue", "fdr", "overlap"], ascending=[True] * len(keys) + [True, True, False]
    )
    return ordered.groupby(keys, sort=False, dropna=False).head(1).reset_index(drop=True)
