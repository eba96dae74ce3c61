# Train every model x split x seed of an experiment.
import samsbench.data.memory as sbmemory


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
        runtime=60,
    params:
        run=run_identity,
        hp=lambda wc: sbconfig.model_hyperparameters(config, wc.experiment, wc.model),
        training=lambda wc: config["experiments"][wc.experiment]["training"],
        device=config["device"],
    message:
        rule_message(
            "Train {wildcards.model} on {wildcards.experiment}, split {wildcards.split}, seed {wildcards.seed}"
        )
    script:
        "../scripts/train.py"


# A baseline's or the ceiling's run: train (fit) and evaluate in one job. Its benchmark file is
# the train step's and covers both (the cost table's evaluate row of these models is empty).
rule fit_and_evaluate:
    input:
        data=prepared,
        split=split_file,
    output:
        model=sbio.run_file(RUN, "model"),
        history=sbio.run_file(RUN, "history"),
        summary=sbio.run_file(RUN, "summary"),
        latents=sbio.run_file(RUN, "latents"),
        predictions=sbio.run_file(RUN, "predictions"),
        metrics=sbio.run_file(RUN, "metrics"),
        # the test perturbations' rows, for the paired bootstrap of aggregate_metrics
        perturbations=sbio.run_file(RUN, "perturbation_metrics"),
    log:
        f"{RESULTS}/logs/train/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    benchmark:
        sbio.benchmark_file(
            RESULTS, "{experiment}", "train", "{model}", "{split}", "{seed}"
        )
    wildcard_constraints:
        model=FITTED_MODEL,
    group:
        pack_group
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, input, attempt: sbmemory.mem_mb(input.data, attempt),
        runtime=60,
    params:
        run=run_identity,
        hp=lambda wc: sbconfig.model_hyperparameters(config, wc.experiment, wc.model),
        training=lambda wc: config["experiments"][wc.experiment]["training"],
        evaluation=lambda wc: config["experiments"][wc.experiment]["evaluation"],
        device=config["device"],
    message:
        rule_message(
            "Fit and evaluate {wildcards.model} on {wildcards.experiment}, split {wildcards.split}, seed {wildcards.seed}"
        )
    script:
        "../scripts/fit_and_evaluate.py"
