import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

_log.setup(snakemake)
import torch  # noqa: E402

from samsbench.stages import train  # noqa: E402

torch.set_num_threads(snakemake.threads)
train.train(
    snakemake.input.data,
    snakemake.input.split,
    dict(snakemake.params.hp),
    dict(snakemake.params.training),
    os.path.dirname(snakemake.output.model),
    seed=snakemake.params.run["seed"],
    device=snakemake.params.device,
    identity=dict(snakemake.params.run),
)
