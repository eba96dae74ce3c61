"""Rule enrich_run: mask enrichment, complex recovery and planted programs for one run."""

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
libraries = {}
for name in sm.params.libraries:
    sets = enrich.read_library(gmts[name])
    if sets:
        libraries[name] = sets
    else:  # e.g. 'pathways' for a dataset without uns["pathways"]
        logging.warning("library %s is empty for this dataset; skipped", name)

recovery = None
for name in sm.params.recovery_candidates:  # 'auto': pathways, then programs, then KEGG
    sets = enrich.read_library(gmts[name])
    if sets:
        recovery = (name, sets)
        break
if recovery is None:
    raise ValueError(f"no non-empty recovery library among {sm.params.recovery_candidates}")
logging.info("complex recovery labels pairs with %s", recovery[0])

tables = enrich.enrich_run(
    Path(sm.output.enrichment).parent,
    libraries,
    recovery,
    threshold=sm.params.threshold,
    min_set_size=sm.params.min_set_size,
    programs=enrich.simulation_programs(sm.input.dataset),
    identity={k: sm.params.run[k] for k in ("model", "split", "seed", "family")},
)
for key, table in tables.items():
    enrich.write_tsv(table, sm.output[key])
    logging.info("%s: %d rows -> %s", key, len(table), sm.output[key])
