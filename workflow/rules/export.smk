# Cell-level export of a run for cell-eval (on demand, not part of the default target), e.g.
#   snakemake results/simulated/cell_eval/sams_vae/ood_half/seed0/predicted.h5ad
CELL_EVAL = sbio.cell_eval_dir(RESULTS, "{experiment}", "{model}", "{split}", "{seed}")


rule export_cell_eval:
    input:
        data=prepared,
        split=split_file,
        model=sbio.run_file(RUN, "model"),
        predictions=sbio.run_file(RUN, "predictions"),
    output:
        predicted=f"{CELL_EVAL}/predicted.h5ad",
        real=f"{CELL_EVAL}/real.h5ad",
    log:
        f"{RESULTS}/logs/export_cell_eval/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    params:
        n_cells=lambda wc: config["experiments"][wc.experiment]["evaluation"][
            "export_cells"
        ],
        clip=lambda wc: config["experiments"][wc.experiment]["evaluation"][
            "export_clip"
        ],
        family=lambda wc: config["models"][wc.model]["family"],
        device=config["device"],
    message:
        rule_message(
            "Export {wildcards.model} ({wildcards.experiment}, split {wildcards.split}, seed {wildcards.seed}) for cell-eval"
        )
    script:
        "../scripts/export_cell_eval.py"
