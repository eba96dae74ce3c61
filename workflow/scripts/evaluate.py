import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
import torch  # noqa: E402

from samsbench import tasks  # noqa: E402

torch.set_num_threads(snakemake.threads)
tasks.evaluate_run(
    dict(snakemake.params.run),
    snakemake.input.data,
    snakemake.input.split,
    snakemake.input.predictions,
    snakemake.input.model,
    snakemake.output[0],
    iwelbo_particles=snakemake.params.evaluation["iwelbo_particles"],
    device=snakemake.params.device,
)
