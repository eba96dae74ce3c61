"""Rule enrich_sources: the gene-set libraries an experiment used, with versions and licences."""

import logging
import sys
from pathlib import Path

from samsbench import enrich

sm = snakemake  # noqa: F821 (snakemake is injected)
sys.stderr = open(sm.log[0], "w")
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
)

gmts = {Path(p).name[: -len(".gmt")]: p for p in sm.input.gmts}
table = enrich.sources_table(gmts, sm.params.gene_sets)
enrich.write_tsv(table, sm.output.table)
logging.info("%d libraries -> %s", len(table), sm.output.table)
