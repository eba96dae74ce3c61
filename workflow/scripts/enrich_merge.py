"""Rule enrich_merge: concatenate the per-run enrichment tables of an experiment."""

import logging
import sys

from samsbench import enrich

sm = snakemake  # noqa: F821 (snakemake is injected)
sys.stderr = open(sm.log[0], "w")
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
)

for key, columns in (
    ("enrichment", enrich.ENRICHMENT_COLUMNS),
    ("complex_recovery", enrich.RECOVERY_COLUMNS),
    ("planted_programs", enrich.PROGRAM_COLUMNS),
):
    merged = enrich.merge_tsvs(sm.input[key], sm.output[key], columns)
    logging.info("%s: %d rows from %d runs", key, len(merged), len(sm.input[key]))
