# Train every model x split x seed of an experiment.


rule train:
    input:
        data=prepared,
        split=split_file,
    output:
        model=sbio.run_file(RUN, "model"),
        history=sbio.run_file(RUN, "history"),
        summary=sbio.run_file(RUN, "summary"),
        latents=sbio.run_file(RUN, "latents"),
    log:
        f"{RESULTS}/logs/train/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    benchmark:
        sbio.benchmark_file(
            RESULTS, "{experiment}", "train", "{model}", "{split}", "{seed}"
        )
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
