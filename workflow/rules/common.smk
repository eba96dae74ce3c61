# Shared helpers: config validation (defaults filled, readable errors) and the list of runs.
import samsbench.config as sbconfig
import samsbench.enrich as sbenrich
import samsbench.stage_mask_stability as sbstability

sbconfig.validate(config)
RESULTS = config["results"]


wildcard_constraints:
    experiment=r"[A-Za-z0-9_\-]+",
    dataset=r"[A-Za-z0-9_\-]+",
    model=r"[A-Za-z0-9_\-]+",
    split=r"[A-Za-z0-9_\-.]+",
    seed=r"\d+",


def runs(experiment):
    return sbconfig.runs(config, experiment)


def run_dirs(experiment):
    return [r["dir"] for r in runs(experiment)]


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
        # paper experiments (a `paper:` block): the paper's tables and figures (paper.smk)
        # instead of the generic figures, whose per-run panels do not scale to 1,125 runs
        if config["experiments"][experiment].get("paper"):
            targets.extend(paper_targets(experiment))
        else:
            targets.extend(figure_files(experiment))
        targets.extend(sbenrich.workflow_targets(config, experiment, RESULTS))
        targets.extend(
            sbstability.workflow_targets(runs(experiment), RESULTS, experiment)
        )
    return targets


FIGURES = ["ate_metrics", "iwelbo", "training_curves"]


def figure_files(experiment):
    return [f"{RESULTS}/{experiment}/figures/{name}.png" for name in FIGURES]


def dataset_inputs(dataset):
    from samsbench.data.prepare import required_inputs

    return required_inputs(config["datasets"][dataset])


def external_metrics(experiment):
    """Metrics of every predictions h5ad dropped in results/{experiment}/external/{model}/{split}.h5ad."""
    found = glob_wildcards(f"{RESULTS}/{experiment}/external/{{model}}/{{split}}.h5ad")
    return [
        f"{RESULTS}/{experiment}/external_metrics/{m}/{s}.tsv"
        for m, s in zip(found.model, found.split)
        if "/" not in m + s
    ]
