import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import data  # noqa: E402

data.split(snakemake.input[0], dict(snakemake.params.split), snakemake.output[0])
