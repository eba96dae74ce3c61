import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import figures  # noqa: E402

figures.enrichment_heatmap(
    list(snakemake.input.latents),
    list(snakemake.params.titles),
    list(snakemake.input.gmts),
    snakemake.output.figure,
)
