# Mask stability across seeds (beyond the reference; samsbench.mask_stability): for every model
# with two or more seeds on a split, Hungarian-matched agreement of the thresholded masks and
# the correlation of q(mask) between seeds, and the enrichment terms found in >= k of n seeds.
# Models without a learned mask are read and left out. Uses RESULTS and runs() of common.smk;
# its targets come from samsbench.stage_mask_stability.workflow_targets.
import samsbench.enrich as sbenrich
import samsbench.stage_mask_stability as sbstability


rule mask_stability:
    input:
        latents=lambda wc: [
            f"{run['dir']}/perturbation_latents.h5ad"
            for run in sbstability.stability_runs(runs(wc.experiment))
        ],
        enrichment=f"{RESULTS}/{{experiment}}/enrichment.tsv",
        data=prepared,
        splits=lambda wc: sorted(
            {
                f"{RESULTS}/datasets/{run['dataset']}/splits/{run['split']}.tsv"
                for run in sbstability.stability_runs(runs(wc.experiment))
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
        runs=lambda wc: sbstability.stability_runs(runs(wc.experiment)),
        threshold=lambda wc: sbenrich.experiment_settings(config, wc.experiment)[
            "threshold"
        ],
        alpha=lambda wc: sbenrich.experiment_settings(config, wc.experiment)["alpha"],
        min_seeds=lambda wc: sbenrich.experiment_settings(config, wc.experiment).get(
            "min_seeds"
        ),
    script:
        "../scripts/mask_stability.py"
