# The paper's tables and figures (the reference's result tables and figures), for experiments
# with a `paper:` block in config.yaml (kind replogle, norman_ood or norman_data_efficiency).
# One job per experiment reads its tidy metrics, the runs' summaries, benchmarks and (Replogle)
# histories and latents, and writes every table (TSV + PNG) and figure under
# results/{experiment}/paper/. Uses from common.smk: RESULTS, runs(), prepared().


rule paper_norman:
    input:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
        summaries=_run_files("summary"),
        benchmarks=_benchmarks,
    output:
        runs=f"{PAPER}/runs.tsv",
        layers_tsv=f"{PAPER}/tables/layer_selection.tsv",
        layers_png=_table(
            "layer_selection", "paper_norman_layers.rst", "n_layers selection"
        ),
        main_tsv=f"{PAPER}/tables/main.tsv",
        main_png=_table("main", "paper_norman_main.rst", "main table"),
        runtime_tsv=f"{PAPER}/tables/runtime.tsv",
        runtime_png=_table("runtime", "paper_runtime.rst", "runtime"),
        bars_iwelbo=_figure(
            "relative_iwelbo_bars",
            "paper_norman_bars_iwelbo.rst",
            "relative IWELBO (bars)",
        ),
        bars_ate=_figure(
            "ate_pearson_bars", "paper_norman_bars_ate.rst", "ATE r (bars)"
        ),
        lines_relative_iwelbo=_figure(
            "lines_relative_test_iwelbo",
            "paper_norman_lines.rst",
            "relative IWELBO (lines)",
        ),
        lines_ate=_figure(
            "lines_ate_pearson_test", "paper_norman_lines.rst", "ATE r (lines)"
        ),
        lines_ate_top20=_figure(
            "lines_ate_pearson_top20_test",
            "paper_norman_lines.rst",
            "ATE r top-20 (lines)",
        ),
        lines_iwelbo=_figure(
            "lines_test_iwelbo", "paper_norman_lines.rst", "test IWELBO (lines)"
        ),
        lines_iwelbo_band=_figure(
            "lines_test_iwelbo_band",
            "paper_norman_lines.rst",
            "test IWELBO ± sd (lines)",
        ),
    log:
        f"{RESULTS}/logs/paper/{{experiment}}.log",
    wildcard_constraints:
        experiment=_one_of(paper_experiments(*NORMAN_KINDS)),
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        settings=lambda wc: sbconfig.experiment_run_settings(config, wc.experiment),
        options=lambda wc: paper_options(wc.experiment),
        benchmark_root=lambda wc: f"{RESULTS}/{wc.experiment}/benchmarks",
    message:
        rule_message("The paper's Norman tables and figures for {wildcards.experiment}")
    script:
        "../scripts/paper_norman.py"


rule paper_replogle:
    input:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
        summaries=_run_files("summary"),
        histories=_run_files("history"),
        latents=_run_files("latents"),
        benchmarks=_benchmarks,
        data=prepared,
    output:
        runs=f"{PAPER}/runs.tsv",
        settings_tsv=f"{PAPER}/tables/settings.tsv",
        settings_png=_table("settings", "paper_replogle_settings.rst", "settings"),
        models_tsv=f"{PAPER}/tables/models.tsv",
        models_png=_table("models", "paper_replogle_models.rst", "model table"),
        runtime_tsv=f"{PAPER}/tables/runtime.tsv",
        runtime_png=_table("runtime", "paper_runtime.rst", "runtime"),
        curves=_figure(
            "training_curves", "paper_replogle_curves.rst", "training curves"
        ),
        masks_all=_figure(
            "mask_probabilities_all",
            "paper_replogle_heatmaps.rst",
            "mask probabilities (all)",
        ),
        masks_pathways=_figure(
            "mask_probabilities_pathways",
            "paper_replogle_heatmaps.rst",
            "mask probabilities (pathways)",
        ),
        embeddings_pathways=_figure(
            "embedding_means_pathways",
            "paper_replogle_heatmaps.rst",
            "embedding means (pathways)",
        ),
    log:
        f"{RESULTS}/logs/paper/{{experiment}}.log",
    wildcard_constraints:
        experiment=_one_of(paper_experiments("replogle")),
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        settings=lambda wc: sbconfig.experiment_run_settings(config, wc.experiment),
        options=lambda wc: paper_options(wc.experiment),
        benchmark_root=lambda wc: f"{RESULTS}/{wc.experiment}/benchmarks",
    message:
        rule_message(
            "The paper's Replogle tables and figures for {wildcards.experiment}"
        )
    script:
        "../scripts/paper_replogle.py"


rule paper_determinism:
    input:
        this=f"{PAPER}/runs.tsv",
        other=lambda wc: f"{RESULTS}/{paper_options(wc.experiment)['same_train_val_as']}/paper/runs.tsv",
    output:
        tsv=f"{PAPER}/tables/determinism.tsv",
        png=_table("determinism", "paper_determinism.rst", "determinism check"),
    log:
        f"{RESULTS}/logs/paper/{{experiment}}_determinism.log",
    wildcard_constraints:
        experiment=_one_of(
            [
                n
                for n in paper_experiments("norman_data_efficiency")
                if paper_options(n).get("same_train_val_as")
            ]
        ),
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    message:
        rule_message("Determinism check of {wildcards.experiment}")
    script:
        "../scripts/paper_determinism.py"
