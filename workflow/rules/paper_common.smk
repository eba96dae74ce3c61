# Helpers of paper.smk: the paper experiments' targets, tables and figures (see paper.smk).
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


def _run_files(role):
    def files(wildcards):
        return run_files(wildcards.experiment, role)

    return files


def _benchmarks(wildcards):
    # every train and evaluate job's benchmark file (the runtime table); a fitted model
    # (train.smk's fit_and_evaluate) has one job, benchmarked as its train step
    out = []
    for r in runs(wildcards.experiment):
        for step in BENCHMARKED[:1] if r["model"] in FITTED else BENCHMARKED:
            out.append(
                sbio.benchmark_file(
                    RESULTS, r["experiment"], step, r["model"], r["split"], r["seed"]
                )
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
