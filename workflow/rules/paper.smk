# The paper's tables and figures (reference/data_and_evaluation.md §5.5-6), for experiments
# with a `paper:` block in config.yaml (kind replogle, norman_ood or norman_data_efficiency).
# One job per experiment reads its tidy metrics, the runs' summaries, benchmarks and (Replogle)
# histories and latents, and writes every table (TSV + PNG) and figure under
# results/{experiment}/paper/. Uses from common.smk: RESULTS, runs(), prepared().
import re

import samsbench.config as sbconfig

PAPER = f"{RESULTS}/{{experiment}}/paper"
NORMAN_KINDS = ("norman_ood", "norman_data_efficiency")
BENCHMARKED = ("train", "evaluate")  # per-run rules with a benchmark: file


def paper_options(experiment):
    return config["experiments"][experiment].get("paper") or {}


def paper_experiments(*kinds):
    return [n for n in config["experiments"] if paper_options(n).get("kind") in kinds]


def _one_of(names):
    # wildcard constraint matching exactly these experiment names (nothing if none)
    return "|".join(re.escape(n) for n in names) or "(?!)"


def _run_files(name):
    def files(wildcards):
        return [f"{r['dir']}/{name}" for r in runs(wildcards.experiment)]

    return files


def _benchmarks(wildcards):
    # every train and evaluate job's benchmark file (the runtime table)
    out = []
    for r in runs(wildcards.experiment):
        for step in BENCHMARKED:
            out.append(
                f"{RESULTS}/{r['experiment']}/benchmarks/{step}/{r['model']}/{r['split']}/seed{r['seed']}.tsv"
            )
    return out


def _table(name, caption, title, experiment_wildcard="{experiment}"):
    return report(
        f"{PAPER}/tables/{name}.png",
        caption=f"../report/{caption}",
        category=experiment_wildcard,
        subcategory="Paper tables",
        labels={"table": title},
    )


def _figure(name, caption, title):
    return report(
        f"{PAPER}/figures/{name}.png",
        caption=f"../report/{caption}",
        category="{experiment}",
        subcategory="Paper figures",
        labels={"figure": title},
    )


NORMAN_TABLES = [
    "runs.tsv",
    "tables/layer_selection.tsv",
    "tables/main.tsv",
    "tables/runtime.tsv",
]
NORMAN_PNGS = [
    "tables/layer_selection.png",
    "tables/main.png",
    "tables/runtime.png",
    "figures/relative_iwelbo_bars.png",
    "figures/ate_pearson_bars.png",
    "figures/lines_relative_test_iwelbo.png",
    "figures/lines_ate_pearson_test.png",
    "figures/lines_ate_pearson_top20_test.png",
    "figures/lines_test_iwelbo.png",
    "figures/lines_test_iwelbo_band.png",
]
REPLOGLE_TABLES = [
    "runs.tsv",
    "tables/settings.tsv",
    "tables/models.tsv",
    "tables/runtime.tsv",
]
REPLOGLE_PNGS = [
    "tables/settings.png",
    "tables/models.png",
    "tables/runtime.png",
    "figures/training_curves.png",
    "figures/mask_probabilities_all.png",
    "figures/mask_probabilities_pathways.png",
    "figures/embedding_means_pathways.png",
]


def determinism_partner(experiment):
    """The OOD experiment to compare with, when it is built too."""
    other = paper_options(experiment).get("same_train_val_as")
    if other and other in config["run"] and experiment in config["run"]:
        return other
    return None


def paper_targets(experiment):
    """Every paper output of an experiment (empty without a `paper:` block)."""
    kind = paper_options(experiment).get("kind")
    out = f"{RESULTS}/{experiment}/paper"
    if kind in NORMAN_KINDS:
        files = NORMAN_TABLES + NORMAN_PNGS
    elif kind == "replogle":
        files = REPLOGLE_TABLES + REPLOGLE_PNGS
    else:
        return []
    targets = [f"{out}/{name}" for name in files]
    if kind == "norman_data_efficiency" and determinism_partner(experiment):
        targets += [f"{out}/tables/determinism.tsv", f"{out}/tables/determinism.png"]
    return targets


rule paper_norman:
    input:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
        summaries=_run_files("summary.json"),
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
    script:
        "../scripts/paper_norman.py"


rule paper_replogle:
    input:
        metrics=f"{RESULTS}/{{experiment}}/metrics.tsv",
        summaries=_run_files("summary.json"),
        histories=_run_files("history.tsv"),
        latents=_run_files("perturbation_latents.h5ad"),
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
    script:
        "../scripts/paper_determinism.py"
