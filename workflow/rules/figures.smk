# Figures for the HTML report (snakemake --report).


rule figures:
    input:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
        histories=lambda wc: run_files(wc.experiment, "history"),
    output:
        ate=report(
            f"{RESULTS}/{{experiment}}/figures/ate_metrics.png",
            caption="../report/ate_metrics.rst",
            category="{experiment}",
            subcategory="Metrics",
        ),
        iwelbo=report(
            f"{RESULTS}/{{experiment}}/figures/iwelbo.png",
            caption="../report/iwelbo.rst",
            category="{experiment}",
            subcategory="Metrics",
        ),
        curves=report(
            f"{RESULTS}/{{experiment}}/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="{experiment}",
            subcategory="Training",
        ),
    log:
        f"{RESULTS}/logs/figures/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        runs=lambda wc: runs(wc.experiment),
    message:
        rule_message("Figures of {wildcards.experiment}")
    script:
        "../scripts/figures.py"
