import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import stability  # noqa: E402

# only perturbations with training cells are compared (held-out ones keep their initial q)
enrichment = list(snakemake.input.enrichment)  # none without gene symbols
stability.mask_stability(
    [dict(run) for run in snakemake.params.runs],
    list(snakemake.input.latents),
    snakemake.input.data,
    list(snakemake.input.splits),
    enrichment[0] if enrichment else None,
    snakemake.output.pairs,
    snakemake.output.support,
    snakemake.output.figure,
    threshold=float(snakemake.params.settings["threshold"]),
    alpha=float(snakemake.params.settings["alpha"]),
    min_seeds=snakemake.params.settings.get("min_seeds"),
)
