import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import evaluate  # noqa: E402

evaluate.mask_recovery(
    snakemake.input.dataset,
    list(snakemake.input.latents),
    [dict(run) for run in snakemake.params.runs],
    snakemake.output.table,
)
