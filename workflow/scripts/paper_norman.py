import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import figures  # noqa: E402

figures.paper_norman(
    metrics_path=snakemake.input.metrics,
    settings=list(snakemake.params.settings),
    options=dict(snakemake.params.options),
    outputs=dict(snakemake.output.items()),
    benchmark_root=snakemake.params.benchmark_root,
)
