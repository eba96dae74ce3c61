"""Rule enrich_gene_set: write one gene-set library as a normalised GMT for an experiment."""

import logging
import sys

from samsbench import enrich

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
)

n = enrich.materialise(
    snakemake.wildcards.library,  # noqa: F821
    snakemake.params.gene_sets,  # noqa: F821
    snakemake.input.dataset,  # noqa: F821
    snakemake.output.gmt,  # noqa: F821
)
logging.info("%s: %d gene sets -> %s", snakemake.wildcards.library, n, snakemake.output.gmt)  # noqa: F821
