"""Rule mask_stability: agreement of masks between seeds, and enrichment terms' seed support."""

import logging
import os
import sys

from samsbench.stage_mask_stability import run_mask_stability, trained_perturbations

sm = snakemake  # noqa: F821 (snakemake is injected)
sys.stderr = open(sm.log[0], "w")
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
)

# only perturbations with training cells are compared (held-out ones keep their initial q)
split_paths = {os.path.basename(p)[: -len(".tsv")]: p for p in sm.input.splits}
pairs = run_mask_stability(
    list(sm.params.runs), list(sm.input.latents), sm.input.enrichment,
    sm.output.pairs, sm.output.support, sm.output.figure,
    threshold=float(sm.params.threshold), alpha=float(sm.params.alpha),
    min_seeds=sm.params.min_seeds,
    trained=trained_perturbations(sm.input.data, split_paths),
)
logging.info("%d pairs of seeds compared", len(pairs))
