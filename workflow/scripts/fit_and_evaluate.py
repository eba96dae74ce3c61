import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
from samsbench.stages import evaluate, train  # noqa: E402

out, run = snakemake.output, dict(snakemake.params.run)
train.train(snakemake.input.data, snakemake.input.split, dict(snakemake.params.hp),
            dict(snakemake.params.training), os.path.dirname(out.model), seed=run["seed"],
            device=snakemake.params.device, identity=run)
settings = snakemake.params.evaluation
evaluate.predict(snakemake.input.data, snakemake.input.split, out.model, out.predictions,
                 n_particles=settings["ate_particles"], chunk=settings["ate_chunk"],
                 device=snakemake.params.device, family=run["family"])
evaluate.score(run, snakemake.input.data, snakemake.input.split, out.predictions, out.model,
               out.metrics, iwelbo_particles=settings["iwelbo_particles"],
               device=snakemake.params.device, perturbations_path=out.perturbations)
