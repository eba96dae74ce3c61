import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import export  # noqa: E402

export.export_cell_eval(
    snakemake.input.model,
    snakemake.input.data,
    snakemake.input.split,
    os.path.dirname(snakemake.output.predicted),
    n_cells=snakemake.params.n_cells,
    clip=snakemake.params.clip,
    predictions_path=snakemake.input.predictions,
    device=snakemake.params.device,
    family=snakemake.params.family,  # the config's (trusted) family, for a plug-in
)
