# Mask stability across seeds (beyond the reference; samsbench.stages.stability): for every
# model with two or more seeds on a split, Hungarian-matched agreement of the thresholded masks
# and the correlation of q(mask) between seeds, and the enrichment terms found in >= k of n
# seeds. Models without a learned mask are read and left out. Uses from common.smk: RESULTS,
# prepared, run_files, stability_runs, enrichment_settings and dataset_reader; targets:
# stability_targets.


rule mask_stability:
    input:
        latents=lambda wc: run_files(
            wc.experiment, "latents", stability_runs(wc.experiment)
        ),
        # gene-set enrichment only where var names are gene symbols (else no seed support)
        enrichment=lambda wc: (
            [f"{RESULTS}/{wc.experiment}/enrichment.tsv"]
            if dataset_reader(wc.experiment).gene_symbols
            else []
        ),
        data=prepared,
        splits=lambda wc: sorted(
            {
                f"{RESULTS}/datasets/{run['dataset']}/splits/{run['split']}.tsv"
                for run in stability_runs(wc.experiment)
            }
        ),
    output:
        pairs=report(
            f"{RESULTS}/{{experiment}}/mask_stability.tsv",
            caption="../report/mask_stability.rst",
            category="{experiment}",
            subcategory="Mask stability",
        ),
        support=f"{RESULTS}/{{experiment}}/enrichment_seed_support.tsv",
        figure=report(
            f"{RESULTS}/{{experiment}}/figures/mask_stability.png",
            caption="../report/mask_stability.rst",
            category="{experiment}",
            subcategory="Mask stability",
        ),
    log:
        f"{RESULTS}/logs/mask_stability/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        runs=lambda wc: stability_runs(wc.experiment),
        settings=lambda wc: enrichment_settings(wc.experiment),
    message:
        rule_message("Mask stability across seeds of {wildcards.experiment}")
    script:
        "../scripts/mask_stability.py"
