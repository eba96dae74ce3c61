import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import classes  # noqa: E402

classes.run(snakemake.input.metrics, snakemake.output.table, snakemake.output.figure)
