# Predictions (h5ad), metrics per run, and the experiment's tidy metrics table.
import samsbench.data.memory as sbmemory


rule evaluate:
    input:
        data=prepared,
        split=split_file,
        model=sbio.run_file(RUN, "model"),
    output:
        predictions=sbio.run_file(RUN, "predictions"),
        metrics=sbio.run_file(RUN, "metrics"),
        # the test perturbations' rows, for the paired bootstrap of aggregate_metrics
        perturbations=sbio.run_file(RUN, "perturbation_metrics"),
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    benchmark:
        sbio.benchmark_file(
            RESULTS, "{experiment}", "evaluate", "{model}", "{split}", "{seed}"
        )
    wildcard_constraints:
        model=GRADIENT_MODEL,
    group:
        pack_group
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    resources:
        # the dense matrix and overheads, from the prepared file's shape (data/memory.py)
        mem_mb=lambda wc, input, attempt: sbmemory.mem_mb(input.data, attempt),
    params:
        run=run_identity,
        evaluation=lambda wc: config["experiments"][wc.experiment]["evaluation"],
        device=config["device"],
    message:
        rule_message(
            "Evaluate {wildcards.model} on {wildcards.experiment}, split {wildcards.split}, seed {wildcards.seed}"
        )
    script:
        "../scripts/evaluate.py"


rule score_external:
    input:
        data=prepared,
        split=split_file,
        predictions=f"{RESULTS}/{{experiment}}/external/{{model}}/{{split}}.h5ad",
    output:
        f"{RESULTS}/{{experiment}}/external_metrics/{{model}}/{{split}}.tsv",
    log:
        f"{RESULTS}/logs/score_external/{{experiment}}/{{model}}/{{split}}.log",
    conda:
        "../../envs/samsbench.yaml"
    params:
        run=lambda wc: {**run_identity(wc, "external"), "seed": 0},
    message:
        rule_message(
            "Score external predictions {wildcards.model} on {wildcards.experiment}, split {wildcards.split}"
        )
    script:
        "../scripts/score_external.py"


rule aggregate_metrics:
    input:
        metrics=lambda wc: run_files(wc.experiment, "metrics")
        + external_metrics(wc.experiment),
        perturbations=lambda wc: run_files(wc.experiment, "perturbation_metrics"),
    output:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
        # the paired bootstrap over test perturbations and seeds (ceiling.paired_bootstrap)
        differences=f"{RESULTS}/{{experiment}}/differences.tsv",
    log:
        f"{RESULTS}/logs/aggregate_metrics/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    message:
        rule_message("Collect the metrics of {wildcards.experiment}")
    script:
        "../scripts/aggregate_metrics.py"
