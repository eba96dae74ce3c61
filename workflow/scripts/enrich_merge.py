import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import enrich  # noqa: E402

enrich.run_experiment(
    [run["dir"] for run in snakemake.params.runs],
    list(snakemake.params.identities),
    list(snakemake.input.gmts),
    dict(snakemake.params.settings),
    snakemake.input.dataset,
    snakemake.output,
)
