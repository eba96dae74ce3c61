import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import data  # noqa: E402

data.prepare(dict(snakemake.params.dataset), list(snakemake.input), snakemake.output[0])
