# Recovery of a planted mask (simulated datasets): precision / recall / F1 and AUROC of every
# masked run's q(mask), under the reference's matching convention and ours
# (samsbench.planted_truth; targets: planted_truth.workflow_targets). Uses from common.smk:
# RESULTS, prepared, runs(experiment).
import samsbench.planted_truth as sbplanted


rule mask_recovery:
    input:
        dataset=prepared,
        latents=lambda wc: [
            f"{run['dir']}/perturbation_latents.h5ad" for run in runs(wc.experiment)
        ],
    output:
        table=report(
            f"{RESULTS}/{{experiment}}/mask_recovery.tsv",
            caption="../report/mask_recovery.rst",
            category="{experiment}",
            subcategory="Mask recovery",
        ),
    log:
        f"{RESULTS}/logs/mask_recovery/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        runs=lambda wc: [
            {k: run[k] for k in sbplanted.RUN_KEYS} for run in runs(wc.experiment)
        ],
    script:
        "../scripts/mask_recovery.py"
