"""Enrichment science on in-memory objects: gene-set parsing, over-representation, recovery,
mask stability across seeds.

No module here opens files, reads the configuration or knows the workflow; the stages
(samsbench.stages.enrich) do that and hand these functions plain mappings and frames."""
