# Enrichment of learned masks against gene-set libraries, and complex recovery (beyond the
# reference; see DESIGN.md "Enrichment" and docs/gene_sets.md). Uses from common.smk: RESULTS,
# prepared, run_identity and runs(experiment). Settings: experiments.<name>.enrichment, read by
# samsbench.enrich.experiment_settings; targets: samsbench.enrich.workflow_targets.
import samsbench.enrich as sbenrich

ENRICH_RUN = f"{RESULTS}/{{experiment}}/runs/{{model}}/{{split}}/seed{{seed}}"
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
    script:
        "../scripts/enrich_gene_set.py"


rule enrich_sources:
    input:
        gmts=lambda wc: [
            ENRICH_GMT.format(experiment=wc.experiment, name=name)
            for name in sbenrich.libraries_used(config, wc.experiment)
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
    script:
        "../scripts/enrich_sources.py"


rule enrich_run:
    input:
        latents=f"{ENRICH_RUN}/perturbation_latents.h5ad",
        predictions=f"{ENRICH_RUN}/predictions.h5ad",
        summary=f"{ENRICH_RUN}/summary.json",
        dataset=prepared,
        gmts=lambda wc: [
            ENRICH_GMT.format(experiment=wc.experiment, name=name)
            for name in dict.fromkeys(
                sbenrich.experiment_settings(config, wc.experiment)["gene_sets"]
                + sbenrich.library_candidates(
                    config, wc.experiment, "recovery_library"
                )
            )
        ],
    output:
        enrichment=f"{ENRICH_RUN}/enrichment.tsv",
        complex_recovery=f"{ENRICH_RUN}/complex_recovery.tsv",
        planted_programs=f"{ENRICH_RUN}/planted_programs.tsv",
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/{{model}}/{{split}}/seed{{seed}}.log",
    conda:
        "../../envs/samsbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        run=run_identity,
        libraries=lambda wc: sbenrich.experiment_settings(config, wc.experiment)[
            "gene_sets"
        ],
        recovery_candidates=lambda wc: sbenrich.library_candidates(
            config, wc.experiment, "recovery_library"
        ),
        threshold=lambda wc: sbenrich.experiment_settings(config, wc.experiment)[
            "threshold"
        ],
        min_set_size=lambda wc: sbenrich.experiment_settings(config, wc.experiment)[
            "min_set_size"
        ],
    script:
        "../scripts/enrich_run.py"


rule enrich_merge:
    input:
        enrichment=lambda wc: [
            f"{run['dir']}/enrichment.tsv"
            for run in sbenrich.selected_runs(
                config, wc.experiment, runs(wc.experiment)
            )
        ],
        complex_recovery=lambda wc: [
            f"{run['dir']}/complex_recovery.tsv"
            for run in sbenrich.selected_runs(
                config, wc.experiment, runs(wc.experiment)
            )
        ],
        planted_programs=lambda wc: [
            f"{run['dir']}/planted_programs.tsv"
            for run in sbenrich.selected_runs(
                config, wc.experiment, runs(wc.experiment)
            )
        ],
    output:
        enrichment=f"{RESULTS}/{{experiment}}/enrichment.tsv",
        complex_recovery=f"{RESULTS}/{{experiment}}/complex_recovery.tsv",
        planted_programs=f"{RESULTS}/{{experiment}}/planted_programs.tsv",
    log:
        f"{RESULTS}/logs/enrich/{{experiment}}/merge.log",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    script:
        "../scripts/enrich_merge.py"


rule enrich_heatmap:
    input:
        # the first split and seed of each model; the script skips models without masks
        latents=lambda wc: [
            f"{run['dir']}/perturbation_latents.h5ad"
            for run in sbenrich.first_run_per_model(
                sbenrich.selected_runs(config, wc.experiment, runs(wc.experiment))
            )
        ],
        gmts=lambda wc: [
            ENRICH_GMT.format(experiment=wc.experiment, name=name)
            for name in sbenrich.library_candidates(
                config, wc.experiment, "heatmap_library"
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
        figure="heatmap",
        titles=lambda wc: [
            f"{run['model']} / {run['split']} / seed {run['seed']}"
            for run in sbenrich.first_run_per_model(
                sbenrich.selected_runs(config, wc.experiment, runs(wc.experiment))
            )
        ],
    script:
        "../scripts/enrich_figures.py"


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
        figure="top_terms",
        alpha=lambda wc: sbenrich.experiment_settings(config, wc.experiment)["alpha"],
    script:
        "../scripts/enrich_figures.py"


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
    params:
        figure="recovery",
    script:
        "../scripts/enrich_figures.py"
