import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import enrich  # noqa: E402

enrich.program_rate(snakemake.input.table, snakemake.output.table, snakemake.output.figure)
