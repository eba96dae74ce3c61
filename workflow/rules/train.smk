# Train every model x split x seed of an experiment.


rule train:
    input:
        data=prepared,
        split=split_file,
    output:
        model=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/model.pt",
        history=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/history.tsv",
        summary=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/summary.json",
        latents=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/perturbation_latents.h5ad",
    log:
        f"{RESULTS}/logs/train/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/train/{{model}}/{{split}}/seed{{seed}}.tsv"
    group:
        pack_group
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        run=run_identity,
        hp=lambda wc: sbconfig.model_hyperparameters(config, wc.experiment, wc.model),
        training=lambda wc: config["experiments"][wc.experiment]["training"],
        device=config["device"],
    script:
        "../scripts/train.py"
