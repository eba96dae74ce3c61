import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import evaluate  # noqa: E402

evaluate.score_table(snakemake.input[0], snakemake.output[0])
