# Prepared datasets (the AnnData contract) and their splits.


rule prepare_dataset:
    input:
        lambda wc: dataset_inputs(wc.dataset),
    output:
        f"{RESULTS}/datasets/{{dataset}}/prepared.h5ad",
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    conda:
        "../../envs/samsbench.yaml"
    resources:
        mem_mb=4000,
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
    message:
        rule_message("Prepare dataset {wildcards.dataset} (the AnnData contract)")
    script:
        "../scripts/prepare_dataset.py"


rule make_split:
    input:
        f"{RESULTS}/datasets/{{dataset}}/prepared.h5ad",
    output:
        f"{RESULTS}/datasets/{{dataset}}/splits/{{split}}.tsv",
    log:
        f"{RESULTS}/logs/make_split/{{dataset}}/{{split}}.log",
    conda:
        "../../envs/samsbench.yaml"
    params:
        split=lambda wc: config["splits"][wc.split],
    message:
        rule_message("Split {wildcards.dataset}: {wildcards.split}")
    script:
        "../scripts/make_split.py"
