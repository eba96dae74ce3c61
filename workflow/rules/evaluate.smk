# Predictions (h5ad), metrics per run, and the experiment's tidy metrics table.


rule predict:
    input:
        data=prepared,
        split=split_file,
        model=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/model.pt",
    output:
        f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/predictions.h5ad",
    params:
        evaluation=lambda wc: config["experiments"][wc.experiment]["evaluation"],
        device=config["device"],
    log:
        f"{RESULTS}/logs/predict/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/predict/{{model}}/{{split}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/samsbench.yaml"
    script:
        "../scripts/predict.py"


rule evaluate:
    input:
        data=prepared,
        split=split_file,
        model=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/model.pt",
        predictions=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/predictions.h5ad",
    output:
        f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/metrics.tsv",
    params:
        run=run_identity,
        evaluation=lambda wc: config["experiments"][wc.experiment]["evaluation"],
        device=config["device"],
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    threads: 1
    conda:
        "../../envs/samsbench.yaml"
    script:
        "../scripts/evaluate.py"


rule aggregate_metrics:
    input:
        lambda wc: [f"{d}/metrics.tsv" for d in run_dirs(wc.experiment)],
    output:
        f"{RESULTS}/{{experiment}}/metrics.tsv",
    log:
        f"{RESULTS}/logs/aggregate_metrics/{{experiment}}.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    script:
        "../scripts/aggregate_metrics.py"
