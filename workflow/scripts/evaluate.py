import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
import torch  # noqa: E402

from samsbench.stages import evaluate  # noqa: E402

torch.set_num_threads(snakemake.threads)
settings = snakemake.params.evaluation
evaluate.predict(
    snakemake.input.data,
    snakemake.input.split,
    snakemake.input.model,
    snakemake.output.predictions,
    n_particles=settings["ate_particles"],
    chunk=settings["ate_chunk"],
    device=snakemake.params.device,
    family=snakemake.params.run["family"],  # the config's (trusted) family, for a plug-in
)
evaluate.score(
    dict(snakemake.params.run),
    snakemake.input.data,
    snakemake.input.split,
    snakemake.output.predictions,
    snakemake.input.model,
    snakemake.output.metrics,
    iwelbo_particles=settings["iwelbo_particles"],
    device=snakemake.params.device,
    perturbations_path=snakemake.output.perturbations,
)
