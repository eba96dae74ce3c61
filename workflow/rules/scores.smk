# Raw and baseline-normalised scores side by side, one row per model (the report's table).


rule score_table:
    input:
        f"{RESULTS}/{{experiment}}/metrics.tsv",
    output:
        report(
            f"{RESULTS}/{{experiment}}/scores_table.tsv",
            caption="../report/scores_table.rst",
            category="{experiment}",
            subcategory="Metrics",
        ),
    log:
        f"{RESULTS}/logs/score_table/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    message:
        rule_message("Raw and normalised scores of {wildcards.experiment}")
    script:
        "../scripts/score_table.py"
