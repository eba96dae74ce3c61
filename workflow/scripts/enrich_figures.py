"""Rules enrich_heatmap / enrich_top_terms / enrich_recovery_figure: the enrichment figures."""

import logging
import sys
from pathlib import Path

import anndata as ad
import pandas as pd

from samsbench import enrich, plots_enrichment

sm = snakemake  # noqa: F821 (snakemake is injected)
sys.stderr = open(sm.log[0], "w")
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
)
figure = sm.params.figure

if figure == "heatmap":
    library, sets = None, {}
    for path in sm.input.gmts:  # candidates in order; the first non-empty library groups rows
        sets = enrich.read_library(path)
        if sets:
            library = Path(path).name[: -len(".gmt")]
            break
    panels = []
    for title, path in zip(sm.params.titles, sm.input.latents):
        latents = ad.read_h5ad(path)
        if enrich.MASK_LAYER not in latents.layers:
            continue
        mask = pd.DataFrame(
            latents.layers[enrich.MASK_LAYER],
            index=latents.obs_names.astype(str),
            columns=latents.var_names.astype(str),
        )
        panels.append((title, mask, enrich.perturbation_targets(latents)))
    plots_enrichment.mask_heatmaps(panels, sets, sm.output.figure, library or "")
elif figure == "top_terms":
    table = pd.read_csv(sm.input.table, sep="\t")
    table = table[table["library"] == sm.wildcards.library]
    # one facet per model: its first split and seed, so the figure stays readable on big grids
    first = table[["model", "split", "seed"]].drop_duplicates().groupby("model").head(1)
    table = table.merge(first, on=["model", "split", "seed"])
    plots_enrichment.top_terms_dotplot(
        table, sm.output.figure, sm.wildcards.library, sm.params.alpha
    )
elif figure == "recovery":
    plots_enrichment.complex_recovery_plot(pd.read_csv(sm.input.table, sep="\t"), sm.output.figure)
else:
    raise ValueError(f"unknown figure {figure!r}")
logging.info("wrote %s", sm.output.figure)
