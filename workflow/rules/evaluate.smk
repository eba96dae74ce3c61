# Predictions (h5ad), metrics per run, and the experiment's tidy metrics table.


rule evaluate:
    input:
        data=prepared,
        split=split_file,
        model=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/model.pt",
    output:
        predictions=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/predictions.h5ad",
        metrics=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/metrics.tsv",
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/evaluate/{{model}}/{{split}}/seed{{seed}}.tsv"
    group:
        pack_group
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    params:
        run=run_identity,
        evaluation=lambda wc: config["experiments"][wc.experiment]["evaluation"],
        device=config["device"],
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
    script:
        "../scripts/score_external.py"


rule aggregate_metrics:
    input:
        lambda wc: [f"{d}/metrics.tsv" for d in run_dirs(wc.experiment)]
        + external_metrics(wc.experiment),
    output:
        f"{RESULTS}/{{experiment}}/metrics.tsv",
    log:
        f"{RESULTS}/logs/aggregate_metrics/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    script:
        "../scripts/aggregate_metrics.py"
