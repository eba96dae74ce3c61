# Prepared datasets (the AnnData contract) and their splits.


rule prepare_dataset:
    input:
        lambda wc: dataset_inputs(wc.dataset),
    output:
        f"{RESULTS}/datasets/{{dataset}}/prepared.h5ad",
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    resources:
        mem_mb=4000,
    conda:
        "../../envs/samsbench.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule make_split:
    input:
        f"{RESULTS}/datasets/{{dataset}}/prepared.h5ad",
    output:
        f"{RESULTS}/datasets/{{dataset}}/splits/{{split}}.tsv",
    params:
        split=lambda wc: config["splits"][wc.split],
    log:
        f"{RESULTS}/logs/make_split/{{dataset}}/{{split}}.log",
    conda:
        "../../envs/samsbench.yaml"
    script:
        "../scripts/make_split.py"
