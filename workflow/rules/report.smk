# The report's home page: per experiment a leaderboard, a cost table and the provenance
# (samsbench.stages.report), embedded by workflow/report/workflow.rst.


rule report_summary:
    input:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
        differences=f"{RESULTS}/{{experiment}}/differences.tsv",
        summaries=lambda wc: run_files(wc.experiment, "summary"),
        data=prepared,
        splits=lambda wc: list(experiment_splits(wc).values()),
    output:
        leaderboard=f"{RESULTS}/{{experiment}}/leaderboard.tsv",
        cost=f"{RESULTS}/{{experiment}}/cost.tsv",
        provenance=f"{RESULTS}/{{experiment}}/provenance.json",
        html=report(
            f"{RESULTS}/{{experiment}}/leaderboard.html",
            caption="../report/leaderboard.rst",
            category="{experiment}",
            subcategory="Summary",
        ),
    log:
        f"{RESULTS}/logs/report_summary/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        runs=lambda wc: runs(wc.experiment),
        benchmarks=lambda wc: f"{RESULTS}/{wc.experiment}/benchmarks",
        resolved=lambda wc: resolved_experiment(wc.experiment),
        split_paths=experiment_splits,
        device=config["device"],
    message:
        rule_message("Leaderboard, cost and provenance of {wildcards.experiment}")
    script:
        "../scripts/report_summary.py"
