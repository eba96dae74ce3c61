# Cell-level export of a run for cell-eval (on demand, not part of the default target), e.g.
#   snakemake results/simulated/cell_eval/sams_vae/ood_half/seed0/predicted.h5ad


rule export_cell_eval:
    input:
        data=prepared,
        split=split_file,
        model=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/model.pt",
        predictions=f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}/predictions.h5ad",
    output:
        predicted=f"{RESULTS}/{{experiment}}/cell_eval/{{model}}/{{split}}/seed{{seed}}/predicted.h5ad",
        real=f"{RESULTS}/{{experiment}}/cell_eval/{{model}}/{{split}}/seed{{seed}}/real.h5ad",
    log:
        f"{RESULTS}/logs/export_cell_eval/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    params:
        n_cells=lambda wc: config["experiments"][wc.experiment]["evaluation"][
            "export_cells"
        ],
        device=config["device"],
    script:
        "../scripts/export_cell_eval.py"
