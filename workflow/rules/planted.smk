# Planted truth of simulated datasets: recovery of a planted mask (precision / recall / F1 and
# AUROC of every masked run's q(mask), under the reference's matching convention and ours;
# samsbench.stages.evaluate.mask_recovery), of planted programs over seeds, and the scores by
# combination class. Targets: planted_targets in common.smk. Uses from common.smk: RESULTS,
# prepared, runs(experiment), run_files, rule_message.


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


# Planted-program recovery as a rate over seeds, per model and program, with the FDR of
# each seed (samsbench.stages.enrich.program_rate): one seed's result is a coin flip.
rule planted_program_rate:
    input:
        table=f"{RESULTS}/{{experiment}}/planted_programs.tsv",
    output:
        table=report(
            f"{RESULTS}/{{experiment}}/planted_program_rate.tsv",
            caption="../report/planted_program_rate.rst",
            category="{experiment}",
            subcategory="Mask recovery",
        ),
        figure=report(
            f"{RESULTS}/{{experiment}}/figures/planted_program_rate.png",
            caption="../report/planted_program_rate.rst",
            category="{experiment}",
            subcategory="Mask recovery",
        ),
    log:
        f"{RESULTS}/logs/planted_program_rate/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    message:
        rule_message("Planted-program recovery rate of {wildcards.experiment}")
    script:
        "../scripts/planted_program_rate.py"


# Scores per combination class of a simulation's held-out doubles (docs/simulation.md;
# samsbench.stages.classes): the class subsets of metrics.tsv as one table and figure.
rule class_scores:
    input:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
    output:
        table=report(
            f"{RESULTS}/{{experiment}}/class_scores.tsv",
            caption="../report/class_scores.rst",
            category="{experiment}",
            subcategory="Scores by combination class",
        ),
        figure=report(
            f"{RESULTS}/{{experiment}}/figures/class_scores.png",
            caption="../report/class_scores.rst",
            category="{experiment}",
            subcategory="Scores by combination class",
        ),
    log:
        f"{RESULTS}/logs/class_scores/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    message:
        rule_message("Scores by combination class of {wildcards.experiment}")
    script:
        "../scripts/class_scores.py"
