import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import report  # noqa: E402

report.build(
    snakemake.wildcards.experiment,
    snakemake.input.metrics,
    list(snakemake.params.runs),
    snakemake.params.benchmarks,
    dict(snakemake.params.resolved),
    snakemake.input.data,
    dict(snakemake.params.split_paths),
    snakemake.params.device,
    dict(snakemake.output.items()),
    differences_path=snakemake.input.differences,
)
