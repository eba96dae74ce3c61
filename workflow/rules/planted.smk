# Recovery of a planted mask (simulated datasets): precision / recall / F1 and AUROC of every
# masked run's q(mask), under the reference's matching convention and ours
# (samsbench.stages.evaluate.mask_recovery; targets: planted_targets in common.smk). Uses from
# common.smk: RESULTS, prepared, runs(experiment), run_files.


rule mask_recovery:
    input:
        dataset=prepared,
        latents=lambda wc: run_files(wc.experiment, "latents"),
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
        runs=lambda wc: runs(wc.experiment),
    message:
        rule_message("Planted-mask recovery of {wildcards.experiment}")
    script:
        "../scripts/mask_recovery.py"
