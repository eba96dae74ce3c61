import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import enrich  # noqa: E402

enrich.run(
    os.path.dirname(snakemake.output.enrichment),
    list(snakemake.input.gmts),
    dict(snakemake.params.settings),
    snakemake.input.dataset,
    dict(snakemake.params.run),
    snakemake.output,
)
