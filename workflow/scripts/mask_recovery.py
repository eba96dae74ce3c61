import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench import planted_truth, tasks  # noqa: E402

table = planted_truth.mask_recovery_table(
    snakemake.input.dataset,
    list(snakemake.input.latents),
    [dict(run) for run in snakemake.params.runs],
)
tasks.write_tsv(table, snakemake.output.table)
