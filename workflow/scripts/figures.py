import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench import plots  # noqa: E402

plots.experiment_figures(
    metrics_path=snakemake.input.metrics,
    runs=list(snakemake.params.runs),
    outputs=dict(snakemake.output.items()),
)
