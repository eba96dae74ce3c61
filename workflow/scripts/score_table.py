import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
import pandas as pd  # noqa: E402

from samsbench import evaluate, tasks  # noqa: E402

table = evaluate.score_table(pd.read_csv(snakemake.input[0], sep="\t"))
tasks.write_tsv(table, snakemake.output[0])
