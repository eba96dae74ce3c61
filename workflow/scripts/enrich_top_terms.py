import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import figures  # noqa: E402

figures.enrichment_top_terms(
    snakemake.input.table,
    snakemake.wildcards.library,
    snakemake.params.alpha,
    snakemake.output.figure,
)
