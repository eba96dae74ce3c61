"""End to end: the Snakemake workflow on a tiny config in a temporary directory."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEMAKE = os.path.join(os.path.dirname(sys.executable), "snakemake")

TINY_CONFIG = {
    "run": ["tiny"],
    "datasets": {"sim": {"source": "simulate", "simulate": {
        "n_programs": 2, "targets_per_program": 3, "n_background": 2, "n_extra_dims": 2,
        "n_doubles": 6, "n_genes": 30, "cells_per_perturbation": 20, "n_control": 60}}},
    "splits": {"random": {"kind": "random", "seed": 0},
               "ood": {"kind": "ood", "seed": 0, "fraction": 0.5}},
    "model_defaults": {"n_latent": 6, "encoder_n_hidden": 16, "decoder_n_hidden": 16,
                       "embedding_encoder_n_hidden": 8, "mask_prior_prob": 0.2},
    "models": {"sams_vae": {"family": "sams_vae"},
               "svae_plus": {"family": "svae_plus", "encoding": "unique"},
               "additive_mean": {"family": "additive_mean"},
               # a model added through the plug-in contract alone: one file, one config block
               "toy": {"family": os.path.join(ROOT, "tests/plugins/toy_model.py") + ":HalfShift"}},
    "experiments": {"tiny": {
        "dataset": "sim", "splits": ["random", "ood"],
        "models": ["sams_vae", "svae_plus", "additive_mean", "toy"], "seeds": [0],
        "training": {"max_steps": 20, "batch_size": 64, "val_every": 10, "iwelbo_particles": 10},
        "evaluation": {"ate_particles": 40, "iwelbo_particles": 10}}},
}


def snakemake(directory, *args, check=True):
    cmd = [SNAKEMAKE, "--snakefile", os.path.join(ROOT, "Snakefile"), "--directory",
           str(directory), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def make_workdir(path, config=TINY_CONFIG):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = make_workdir(tmp_path_factory.mktemp("wf") / "a")
    snakemake(work)
    return work


def test_metrics_table_is_tidy_and_complete(finished):
    table = pd.read_csv(finished / "results/tiny/metrics.tsv", sep="\t")
    assert list(table.columns[:9]) == ["experiment", "dataset", "model", "family", "split", "seed",
                                       "metric", "subset", "value"]
    assert set(table["model"]) == {"sams_vae", "svae_plus", "additive_mean", "toy"}
    toy = table[(table["model"] == "toy") & (table["metric"] == "ate_pearson")]
    assert len(toy) and toy["value"].between(0.5, 1.0).all()
    assert set(table["split"]) == {"random", "ood"}
    assert table["value"].notna().all()
    sams = table[(table["model"] == "sams_vae") & (table["split"] == "random")]
    assert {"test_iwelbo", "val_iwelbo", "ate_pearson", "ate_r2", "ate_pearson_top20",
            "ate_r2_top20"} <= set(sams["metric"])
    # baselines have no likelihood, hence no IWELBO
    assert "test_iwelbo" not in set(table[table["model"] == "additive_mean"]["metric"])
    for run in ("sams_vae/random/seed0", "svae_plus/ood/seed0"):
        for name in ("model.pt", "history.tsv", "summary.json", "perturbation_latents.h5ad",
                     "predictions.h5ad"):
            assert (finished / "results/tiny/runs" / run / name).stat().st_size > 0


def test_second_run_has_nothing_to_do(finished):
    result = snakemake(finished, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_same_seed_gives_byte_identical_metrics(finished, tmp_path):
    other = make_workdir(tmp_path / "b")
    snakemake(other)
    a = (finished / "results/tiny/metrics.tsv").read_bytes()
    assert a == (other / "results/tiny/metrics.tsv").read_bytes()


@pytest.fixture(scope="module")
def report_html(finished):
    snakemake(finished, "--report", "results/report.html")
    return finished / "results/report.html"


def test_report_has_figures(report_html):
    html = report_html.read_text(errors="replace")
    assert "ate_metrics.png" in html and "mask_heatmaps.png" in html and "complex_recovery.png" in html


def test_provenance_and_leaderboard_files(finished):
    import json

    record = json.loads((finished / "results/tiny/provenance.json").read_text())
    assert record["seeds"] == [0]
    assert set(record["sha256"]) == {"dataset", "split:random", "split:ood"}
    assert all(len(v) == 64 for v in record["sha256"].values())
    assert record["config"]["models"]["sams_vae"]["n_latent"] == 6  # resolved, defaults filled
    summary = json.loads((finished / "results/tiny/runs/sams_vae/ood/seed0/summary.json").read_text())
    assert summary["provenance"]["sha256"]["dataset"] == record["sha256"]["dataset"]
    assert summary["provenance"]["software"]["torch"]
    board = pd.read_csv(finished / "results/tiny/leaderboard.tsv", sep="\t")
    # a best is marked only where the paired bootstrap shows it beyond noise: at most one
    # per split, and the bootstrap's
    differences = pd.read_csv(finished / "results/tiny/differences.tsv", sep="\t")
    best = board[board["best"] & (board["metric"] == "ate_pearson")]
    assert best["split"].is_unique
    marked = differences[differences["best"] & (differences["metric"] == "ate_pearson")]
    assert sorted(best["model"]) == sorted(marked["model"])
    assert set(differences["split"]) == {"random", "ood"}


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (make test installs Debian's "
                    "chromium when run as root)")
def test_report_home_page_shows_leaderboard_and_provenance(report_html, tmp_path):
    # the report is a JavaScript app: render it in a headless browser and read the DOM
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
           "--dump-dom", report_html.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'id="leaderboard-tiny"' in dom, dom[-2000:]
    assert 'id="provenance-tiny"' in dom
    assert "sha256 dataset" in dom and "git commit" in dom
    # the leaderboard holds every model of the experiment
    table = dom[dom.index('id="leaderboard-tiny"'):]
    table = table[: table.index("</table>")]
    for model in ("sams_vae", "svae_plus", "additive_mean", "toy"):
        assert f">{model}<" in table


def test_bad_config_gets_a_readable_error(tmp_path):
    config = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    config["splits"]["random"]["kind"] = "stratified"
    work = make_workdir(tmp_path / "bad", config)
    result = snakemake(work, "-n", check=False)
    assert result.returncode != 0
    assert "splits/random/kind" in result.stdout + result.stderr
