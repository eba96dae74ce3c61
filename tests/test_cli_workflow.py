"""The command line and the workflow run the same code for the same step: for one small run,
`samsbench evaluate` and `samsbench enrich` write the same metrics and enrichment tables as
the workflow's evaluate and enrich_run rules (byte for byte)."""

import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

CONFIG = {
    "run": ["tiny"],
    "datasets": {"sim": {"source": "simulate", "simulate": {
        "n_programs": 2, "targets_per_program": 3, "n_background": 2, "n_extra_dims": 2,
        "n_doubles": 6, "n_genes": 30, "cells_per_perturbation": 20, "n_control": 60}}},
    "splits": {"random": {"kind": "random", "seed": 0}},
    "model_defaults": {"n_latent": 6, "encoder_n_hidden": 16, "decoder_n_hidden": 16,
                       "embedding_encoder_n_hidden": 8, "mask_prior_prob": 0.2},
    "models": {"sams_vae": {"family": "sams_vae"}},
    "experiments": {"tiny": {
        "dataset": "sim", "splits": ["random"], "models": ["sams_vae"], "seeds": [0],
        "training": {"max_steps": 20, "batch_size": 64, "val_every": 10, "iwelbo_particles": 10},
        "evaluation": {"ate_particles": 40, "iwelbo_particles": 10},
        # a threshold other than the default: the command line must take it from here
        "enrichment": {"gene_sets": ["programs", "KEGG_2021_Human"], "threshold": 0.3}}},
}
RUN = "results/tiny/runs/sams_vae/random/seed0"


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_cli_and_workflow_write_identical_tables(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    targets = [f"{RUN}/{name}" for name in ("metrics.tsv", "enrichment.tsv",
                                             "complex_recovery.tsv", "planted_programs.tsv")]
    _run([os.path.join(BIN, "snakemake"), "--snakefile", os.path.join(ROOT, "Snakefile"),
          "--cores", "1", *targets], tmp_path)

    cli = [os.path.join(BIN, "samsbench")]
    data = "results/datasets/sim/prepared.h5ad"
    _run(cli + ["evaluate", "--run", RUN, "--data", data, "--splits",
                "results/datasets/sim/splits/random.tsv", "--predictions",
                "cli/predictions.h5ad", "--out", "cli/metrics.tsv", "--ate-particles", "40",
                "--iwelbo-particles", "10", "--device", "cpu"], tmp_path)
    # no identity flags: experiment, dataset, model, family, split and seed come from the
    # run's summary.json, so the rows equal the workflow's
    _run(cli + ["enrich", "--experiment", "tiny", "--run", RUN, "--dataset", data,
                "--out", "cli"], tmp_path)

    for name in ("metrics.tsv", "enrichment.tsv", "complex_recovery.tsv", "planted_programs.tsv"):
        workflow = (tmp_path / RUN / name).read_text()
        assert (tmp_path / "cli" / name).read_text() == workflow, name
    # the tables are not trivially equal: the run has enrichment and recovery rows
    assert len((tmp_path / RUN / "complex_recovery.tsv").read_text().splitlines()) > 1
    assert len((tmp_path / RUN / "metrics.tsv").read_text().splitlines()) > 10
