import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import evaluate  # noqa: E402

evaluate.aggregate(
    list(snakemake.input.metrics),
    snakemake.output.metrics,
    list(snakemake.input.perturbations),
    snakemake.output.differences,
)
