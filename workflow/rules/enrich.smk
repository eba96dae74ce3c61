# Enrichment of learned masks against gene-set libraries, and complex recovery (beyond the
# reference; see docs/gene_sets.md). Uses from common.smk: RESULTS, RUN, prepared, run_identity,
# run_files, enrichment_settings (experiments.<name>.enrichment through the one resolver,
# samsbench.stages.enrich.settings), enrichment_runs and first_run_per_model.
ENRICH_GMT = f"{RESULTS}/{{experiment}}/gene_sets/{{name}}.gmt"


rule enrich_gene_set:
    input:
        dataset=prepared,
    output:
        gmt=f"{RESULTS}/{{experiment}}/gene_sets/{{library}}.gmt",
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/gene_set_{{library}}.log",
    wildcard_constraints:
        library=r"[^/]+",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        gene_sets=config.get("gene_sets") or {},
    message:
        rule_message("Gene-set library {wildcards.library} for {wildcards.experiment}")
    script:
        "../scripts/enrich_gene_set.py"


rule enrich_sources:
    input:
        gmts=lambda wc: [
            ENRICH_GMT.format(experiment=wc.experiment, name=name)
            for name in sbenrich.libraries_used(enrichment_settings(wc.experiment))
        ],
    output:
        table=report(
            f"{RESULTS}/{{experiment}}/gene_set_sources.tsv",
            caption="../report/enrichment_sources.rst",
            category="{experiment}",
            subcategory="Enrichment",
        ),
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/sources.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        gene_sets=config.get("gene_sets") or {},
    message:
        rule_message("Gene-set sources of {wildcards.experiment}")
    script:
        "../scripts/enrich_sources.py"


rule enrich_run:
    input:
        latents=sbio.run_file(RUN, "latents"),
        predictions=sbio.run_file(RUN, "predictions"),
        summary=sbio.run_file(RUN, "summary"),
        dataset=prepared,
        gmts=lambda wc: [
            ENRICH_GMT.format(experiment=wc.experiment, name=name)
            for name in sbenrich.run_libraries(enrichment_settings(wc.experiment))
        ],
    output:
        enrichment=sbio.run_file(RUN, "enrichment"),
        complex_recovery=sbio.run_file(RUN, "complex_recovery"),
        planted_programs=sbio.run_file(RUN, "planted_programs"),
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        run=run_identity,
        settings=lambda wc: enrichment_settings(wc.experiment),
    message:
        rule_message(
            "Enrichment of {wildcards.model} on {wildcards.experiment}, split {wildcards.split}, seed {wildcards.seed}"
        )
    script:
        "../scripts/enrich_run.py"


# The experiment's tables, every run computed in one job (stages.enrich.run_experiment): a job
# per run cost seconds of imports for a fraction of a second of work. enrich_run above makes one
# run's tables (a run's own target, and `samsbench enrich`).
rule enrich_merge:
    input:
        latents=lambda wc: run_files(
            wc.experiment, "latents", enrichment_runs(wc.experiment)
        ),
        predictions=lambda wc: run_files(
            wc.experiment, "predictions", enrichment_runs(wc.experiment)
        ),
        summary=lambda wc: run_files(
            wc.experiment, "summary", enrichment_runs(wc.experiment)
        ),
        dataset=prepared,
        gmts=lambda wc: [
            ENRICH_GMT.format(experiment=wc.experiment, name=name)
            for name in sbenrich.run_libraries(enrichment_settings(wc.experiment))
        ],
    output:
        enrichment=f"{RESULTS}/{{experiment}}/enrichment.tsv",
        complex_recovery=f"{RESULTS}/{{experiment}}/complex_recovery.tsv",
        planted_programs=f"{RESULTS}/{{experiment}}/planted_programs.tsv",
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/merge.log",
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        runs=lambda wc: enrichment_runs(wc.experiment),
        identities=lambda wc: [
            {k: r[k] for k in ("model", "split", "seed", "family")}
            for r in enrichment_runs(wc.experiment)
        ],
        settings=lambda wc: enrichment_settings(wc.experiment),
    message:
        rule_message("Enrichment of every run of {wildcards.experiment}")
    script:
        "../scripts/enrich_merge.py"


rule enrich_heatmap:
    input:
        # the first split and seed of each model; the script skips models without masks
        latents=lambda wc: run_files(
            wc.experiment,
            "latents",
            first_run_per_model(enrichment_runs(wc.experiment)),
        ),
        gmts=lambda wc: [
            ENRICH_GMT.format(experiment=wc.experiment, name=name)
            for name in sbenrich.library_candidates(
                enrichment_settings(wc.experiment), "heatmap_library"
            )
        ],
    output:
        figure=report(
            f"{RESULTS}/{{experiment}}/figures/enrichment/mask_heatmaps.png",
            caption="../report/enrichment_heatmap.rst",
            category="{experiment}",
            subcategory="Enrichment",
        ),
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/figure_heatmap.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        titles=lambda wc: [
            f"{run['model']} / {run['split']} / seed {run['seed']}"
            for run in first_run_per_model(enrichment_runs(wc.experiment))
        ],
    message:
        rule_message("Mask heatmaps of {wildcards.experiment}")
    script:
        "../scripts/enrich_heatmap.py"


rule enrich_top_terms:
    input:
        table=f"{RESULTS}/{{experiment}}/enrichment.tsv",
    output:
        figure=report(
            f"{RESULTS}/{{experiment}}/figures/enrichment/top_terms_{{library}}.png",
            caption="../report/enrichment_top_terms.rst",
            category="{experiment}",
            subcategory="Enrichment",
        ),
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/figure_top_terms_{{library}}.log",
    wildcard_constraints:
        library=r"[^/]+",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        alpha=lambda wc: enrichment_settings(wc.experiment)["alpha"],
    message:
        rule_message(
            "Top enriched terms ({wildcards.library}) of {wildcards.experiment}"
        )
    script:
        "../scripts/enrich_top_terms.py"


rule enrich_recovery_figure:
    input:
        table=f"{RESULTS}/{{experiment}}/complex_recovery.tsv",
    output:
        figure=report(
            f"{RESULTS}/{{experiment}}/figures/enrichment/complex_recovery.png",
            caption="../report/enrichment_recovery.rst",
            category="{experiment}",
            subcategory="Enrichment",
        ),
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/figure_recovery.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    message:
        rule_message("Complex recovery figure of {wildcards.experiment}")
    script:
        "../scripts/enrich_recovery_figure.py"
