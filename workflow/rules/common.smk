# Shared helpers: config validation (defaults filled, readable errors), the list of runs, the
# run-directory layout (samsbench.io, spelled once) and every target of the workflow.
import os
import sys

import samsbench.config as sbconfig
import samsbench.io as sbio
import samsbench.stages.data as sbdata
import samsbench.stages.enrich as sbenrich
import samsbench.stages.stability as sbstability

sbconfig.validate(config)
RESULTS = config["results"]
# One run's directory, as a wildcard pattern.
RUN = sbio.run_dir(RESULTS, "{experiment}", "{model}", "{split}", "{seed}")

# Packing (config cluster.runs_per_gpu > 1): every run's train and evaluate jobs join the job
# group "runs"; the Slurm profiles pass --group-components runs=N (N read from ./config.yaml)
# so that N runs share one cluster job. Locally Snakemake ignores groups.
RUNS_PER_JOB = int(config["cluster"]["runs_per_gpu"])


def pack_group(wildcards):
    return "runs" if RUNS_PER_JOB > 1 else None


wildcard_constraints:
    experiment=r"[A-Za-z0-9_\-]+",
    dataset=r"[A-Za-z0-9_\-]+",
    model=r"[A-Za-z0-9_\-]+",
    split=r"[A-Za-z0-9_\-.]+",
    seed=r"\d+",


# Runs of a family without gradient training (baselines, the ceiling) train and evaluate in
# one job (train.smk's fit_and_evaluate): a job costs seconds of imports, their work less.
FITTED = sbconfig.fitted_models(config)
_FITTED = "|".join(FITTED) or "(?!)"  # (?!) matches nothing
GRADIENT_MODEL = rf"(?!(?:{_FITTED})/)[A-Za-z0-9_\-]+"
FITTED_MODEL = rf"(?:{_FITTED})(?=/)"


def rule_message(text):
    """A rule's one console line. With SAMSBENCH_RULE_DETAILS=1 the rules print Snakemake's
    full job block instead (jobid, wildcards, resources), which Snakemake shows only for a
    rule without a message; the cluster tests parse it."""
    return "" if os.environ.get("SAMSBENCH_RULE_DETAILS") == "1" else text


def runs(experiment):
    return sbconfig.runs(config, experiment)


def run_files(experiment, role, selected=None):
    """One file (by its role in samsbench.io.RUN_FILES) of every run, or of ``selected``."""
    chosen = runs(experiment) if selected is None else selected
    return [sbio.run_file(r["dir"], role) for r in chosen]


def experiment_dataset(wildcards):
    return config["experiments"][wildcards.experiment]["dataset"]


def prepared(wildcards):
    return f"{RESULTS}/datasets/{experiment_dataset(wildcards)}/prepared.h5ad"


def split_file(wildcards):
    return f"{RESULTS}/datasets/{experiment_dataset(wildcards)}/splits/{wildcards.split}.tsv"


def run_identity(wildcards, family=None):
    family = family or config["models"][wildcards.model]["family"]
    return {
        "experiment": wildcards.experiment,
        "dataset": experiment_dataset(wildcards),
        "model": wildcards.model,
        "family": family,
        "split": wildcards.split,
        "seed": int(wildcards.seed),
    }


def all_targets():
    targets = []
    for experiment in config["run"]:
        targets.append(f"{RESULTS}/{experiment}/metrics.tsv")
        targets.append(f"{RESULTS}/{experiment}/leaderboard.html")
        # paper experiments (a `paper:` block): the paper's tables and figures (paper.smk)
        # instead of the generic figures, whose per-run panels do not scale to 1,125 runs
        if config["experiments"][experiment].get("paper"):
            targets.extend(paper_targets(experiment))
        else:
            targets.extend(figure_files(experiment))
            targets.append(f"{RESULTS}/{experiment}/scores_table.tsv")
        targets.extend(planted_targets(experiment))
        # gene-set enrichment needs real gene symbols (reference_sim names genes g0, g1, ...)
        if dataset_reader(experiment).gene_symbols:
            targets.extend(enrichment_targets(experiment))
        targets.extend(stability_targets(experiment))
    return targets


def dataset_reader(experiment):
    """The READERS entry (samsbench.stages.data) of an experiment's dataset."""
    return sbdata.reader(
        config["datasets"][config["experiments"][experiment]["dataset"]]
    )


# a missing local gene-set file is found now, not after every model trained
sbenrich.check_library_files(
    config, [e for e in config["run"] if dataset_reader(e).gene_symbols]
)


def planted_targets(experiment):
    """The mask-recovery table, for a dataset with a planted mask, the planted-program rate
    where it has gene symbols, and the scores by combination class (planted.smk)."""
    reader = dataset_reader(experiment)
    if not reader.planted_mask:
        return []
    out = [f"{RESULTS}/{experiment}/mask_recovery.tsv"]
    if reader.gene_symbols:  # planted gene-set programs: their recovery rate over seeds
        out += [
            f"{RESULTS}/{experiment}/planted_program_rate.tsv",
            f"{RESULTS}/{experiment}/figures/planted_program_rate.png",
        ]
    dataset = config["datasets"][config["experiments"][experiment]["dataset"]]
    if (dataset.get("simulate") or {}).get("combination_classes"):
        out += [
            f"{RESULTS}/{experiment}/class_scores.tsv",
            f"{RESULTS}/{experiment}/figures/class_scores.png",
        ]
    return out


def stability_runs(experiment):
    """Runs of the models with two or more seeds on a split (mask_stability.smk)."""
    return sbstability.stability_runs(runs(experiment))


def stability_targets(experiment):
    """Mask stability across seeds, when some model has two or more seeds on a split."""
    if not stability_runs(experiment):
        return []
    out = f"{RESULTS}/{experiment}"
    return [
        f"{out}/mask_stability.tsv",
        f"{out}/enrichment_seed_support.tsv",
        f"{out}/figures/mask_stability.png",
    ]


FIGURES = ["ate_metrics", "iwelbo", "training_curves"]


def figure_files(experiment):
    return [f"{RESULTS}/{experiment}/figures/{name}.png" for name in FIGURES]


def dataset_inputs(dataset):
    return sbdata.required_inputs(config["datasets"][dataset])


def enrichment_settings(experiment):
    return sbenrich.settings(config, experiment)


def enrichment_runs(experiment):
    """The runs an experiment's enrichment covers (enrichment.models, default all)."""
    models = enrichment_settings(experiment)["models"]
    return [r for r in runs(experiment) if models is None or r["model"] in models]


def first_run_per_model(selected):
    """The first split and seed of each model (one heatmap panel / dot-plot facet per model)."""
    first = {}
    for run in selected:
        first.setdefault(run["model"], run)
    return list(first.values())


def enrichment_targets(experiment):
    """Every enrichment output of an experiment, for the Snakefile's all."""
    out = f"{RESULTS}/{experiment}"
    figures = f"{out}/figures/enrichment"
    return [
        f"{out}/gene_set_sources.tsv",
        f"{out}/enrichment.tsv",
        f"{out}/complex_recovery.tsv",
        f"{out}/planted_programs.tsv",
        f"{figures}/mask_heatmaps.png",
        f"{figures}/complex_recovery.png",
    ] + [
        f"{figures}/top_terms_{library}.png" for library in figure_libraries(experiment)
    ]


DATASET_LIBRARIES = ("pathways", "programs")
_warned = set()


def figure_libraries(experiment):
    """The tested libraries that get a top-terms figure: not a library of the dataset's own
    annotation that this dataset lacks (an empty figure would read as a negative result).
    """
    from samsbench.stages.data import dataset_annotations

    dataset = config["experiments"][experiment]["dataset"]
    has = dataset_annotations(config["datasets"][dataset])
    kept = []
    for library in enrichment_settings(experiment)["gene_sets"]:
        if has is not None and library in DATASET_LIBRARIES and library not in has:
            if (experiment, library) not in _warned:
                _warned.add((experiment, library))
                print(
                    f"samsbench: experiment {experiment}: dataset {dataset} has no "
                    f"'{library}' annotation; that library is empty, so it gets no "
                    "top-terms figure",
                    file=sys.stderr,
                )
            continue
        kept.append(library)
    return kept


def external_metrics(experiment):
    """Metrics of every predictions h5ad dropped in results/{experiment}/external/{model}/{split}.h5ad."""
    found = glob_wildcards(f"{RESULTS}/{experiment}/external/{{model}}/{{split}}.h5ad")
    return [
        f"{RESULTS}/{experiment}/external_metrics/{m}/{s}.tsv"
        for m, s in zip(found.model, found.split)
        if "/" not in m + s
    ]


def resolved_experiment(experiment):
    """The settings an experiment's numbers come from, every default filled."""
    exp = config["experiments"][experiment]
    return {
        "experiment": experiment,
        "settings": exp,
        "dataset": {exp["dataset"]: config["datasets"][exp["dataset"]]},
        "splits": {s: config["splits"][s] for s in exp["splits"]},
        "models": {
            m: sbconfig.model_hyperparameters(config, experiment, m)
            for m in exp["models"]
        },
        "device": config["device"],
        "budget_scale": config["budget_scale"],
    }


def experiment_splits(wildcards):
    exp = config["experiments"][wildcards.experiment]
    return {
        s: f"{RESULTS}/datasets/{exp['dataset']}/splits/{s}.tsv" for s in exp["splits"]
    }
