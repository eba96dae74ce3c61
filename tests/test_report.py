"""The report's tables (leaderboard, cost, provenance), the figures' relative IWELBO, and the
newcomer's path: own data (counts layer, missing annotations), `samsbench train` from the
packaged defaults with --set, `evaluate` identity from the run, a fast and loud CLI."""

import json
import math
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from samsbench import config as sbconfig
from samsbench import provenance
from samsbench.plots import experiment as pe
from samsbench.stages import data as sdata
from samsbench.stages import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(model, family, metric, subset, values, normalised=None):
    return [{"experiment": "e", "dataset": "d", "model": model, "family": family, "split": "s",
             "seed": i, "metric": metric, "subset": subset, "value": v,
             **({"normalised": normalised[i]} if normalised else {})}
            for i, v in enumerate(values)]


def test_leaderboard_mean_sd_best_and_reasons():
    rows = (_rows("a", "sams_vae", "ate_pearson", "test", [0.5, 0.7])
            + _rows("b", "cpa_vae", "ate_pearson", "test", [0.6, 0.6])
            + _rows("c", "control_mean", "ate_pearson", "test", [math.nan, math.nan])
            + _rows("a", "sams_vae", "effect_rmse", "test", [2.0, 4.0])
            + _rows("b", "cpa_vae", "effect_rmse", "test", [1.0, 1.0])
            + _rows("c", "control_mean", "effect_rmse", "test", [5.0, 5.0])
            + _rows("a", "sams_vae", "test_iwelbo", "test", [-10.0, -12.0])
            + _rows("a", "sams_vae", "ate_pearson", "all", [0.99, 0.99]))  # other subset
    board = report.leaderboard(pd.DataFrame(rows)).set_index(["model", "metric"])
    assert board.loc[("a", "ate_pearson"), "mean"] == pytest.approx(0.6)
    assert board.loc[("a", "ate_pearson"), "sd"] == pytest.approx(math.sqrt(0.02))
    assert board.loc[("a", "ate_pearson"), "seeds"] == 2
    # a tie at 0.6 is best for both; lower is better for effect_rmse
    assert board.loc[("a", "ate_pearson"), "best"] and board.loc[("b", "ate_pearson"), "best"]
    assert board.loc[("b", "effect_rmse"), "best"] and not board.loc[("c", "effect_rmse"), "best"]
    assert "zero effect" in board.loc[("c", "ate_pearson"), "reason"]
    assert "no likelihood" in board.loc[("b", "test_iwelbo"), "reason"]
    assert "normalised_mean" not in board  # raw only until metrics.tsv has scores
    page = report.leaderboard_html(board.reset_index(), "e").replace("<wbr>", "")
    assert page.count("★</b>") == 4 and "n/a" in page


def test_leaderboard_shows_normalised_scores_when_present():
    rows = (_rows("a", "sams_vae", "ate_pearson", "test", [0.5, 0.7], [0.2, 0.4])
            + _rows("b", "cpa_vae", "ate_pearson", "test", [0.8, 0.8], [0.9, 0.9]))
    board = report.leaderboard(pd.DataFrame(rows)).set_index("model")
    assert board.loc["a", "normalised_mean"] == pytest.approx(0.3)
    assert board.loc["b", "normalised_best"] and not board.loc["a", "normalised_best"]
    assert "normalised ↑" in report.leaderboard_html(board.reset_index(), "e")


def test_cost_table_reads_benchmarks_and_steps_per_second(tmp_path):
    run = {"model": "m", "family": "sams_vae", "split": "s", "seed": 0, "dir": str(tmp_path / "run")}
    os.makedirs(run["dir"])
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"timing": {"steps_per_second": 12.5}}))
    for step, seconds, rss in (("train", 30.0, 512.0), ("evaluate", 4.0, 256.0)):
        path = tmp_path / "bench" / step / "m" / "s" / "seed0.tsv"
        path.parent.mkdir(parents=True)
        path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:30\t{rss}\n")
    cost = report.cost_table([run], str(tmp_path / "bench")).set_index("step")
    assert cost.loc["train", "seconds_mean"] == 30.0 and cost.loc["train", "max_rss_mb"] == 512.0
    assert cost.loc["train", "steps_per_second"] == 12.5
    assert cost.loc["evaluate", "seconds_total"] == 4.0


def test_provenance_records_checksums_and_a_non_git_directory(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"abc")
    record = provenance.record(config={"k": 1}, files={"data": path, "gone": tmp_path / "x"},
                               seeds=[2], device_name="cpu")
    # sha256("abc"), the standard test vector
    assert record["sha256"]["data"] == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert record["sha256"]["gone"] is None and record["seeds"] == [2]
    assert record["device"]["used"] == "cpu" and record["config"] == {"k": 1}
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None,
                                              "note": "not a git checkout"}
    here = provenance.git_state(ROOT)
    if here["commit"] is not None:  # a git checkout (the source tree of the tests)
        assert len(here["commit"]) == 40 and isinstance(here["dirty"], bool)


def test_relative_iwelbo_is_per_split_and_seed():
    table = pd.DataFrame([
        {"model": m, "metric": "test_iwelbo", "subset": "test", "split": "s", "seed": seed, "value": v}
        for m, seed, v in (("ref", 0, -500.0), ("ref", 1, -510.0), ("x", 0, -499.0),
                           ("x", 1, -509.5), ("y", 2, -1.0))])  # y has no reference run
    rel = pe.relative_to(table, "ref").set_index(["model", "seed"])["value"]
    assert rel[("x", 0)] == 1.0 and rel[("x", 1)] == 0.5 and rel[("ref", 0)] == 0.0
    assert "y" not in rel.index.get_level_values(0)


def _contract_like(X, layers=None):
    obs = pd.DataFrame({"perturbation": ["ctrl", "ctrl", "A", "B"]},
                       index=[f"c{i}" for i in range(4)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["g1", "g2"]), layers=layers or {})
    adata.uns["control_label"] = "ctrl"
    return adata


@pytest.mark.parametrize("x_kind", ["normalised", "absent"])
def test_h5ad_source_takes_counts_from_the_counts_layer(tmp_path, x_kind):
    counts = np.array([[1, 2], [0, 3], [5, 0], [2, 2]], dtype=np.float32)
    X = None if x_kind == "absent" else np.log1p(counts) + 0.1
    path = tmp_path / "mine.h5ad"
    _contract_like(X, {"counts": counts}).write_h5ad(path)
    block = {"source": "h5ad", "path": str(path)}
    sdata.prepare(block, sdata.required_inputs(block), tmp_path / "prepared.h5ad")
    prepared = ad.read_h5ad(tmp_path / "prepared.h5ad")
    np.testing.assert_array_equal(np.asarray(prepared.X), counts)
    assert "counts" not in prepared.layers


def test_dataset_annotations_known_before_preparing(tmp_path):
    path = tmp_path / "mine.h5ad"
    _contract_like(np.ones((4, 2), dtype=np.float32)).write_h5ad(path)
    assert sdata.dataset_annotations({"source": "h5ad", "path": str(path)}) == set()
    with_pathways = _contract_like(np.ones((4, 2), dtype=np.float32))
    with_pathways.uns["pathways"] = {"P1": ["A", "B"]}
    with_pathways.write_h5ad(tmp_path / "p.h5ad")
    assert sdata.dataset_annotations({"source": "h5ad", "path": str(tmp_path / "p.h5ad")}) \
        == {"pathways"}
    assert sdata.dataset_annotations({"source": "simulate"}) == {"pathways", "programs"}
    assert sdata.dataset_annotations({"source": "h5ad", "path": str(tmp_path / "nope")}) is None


def test_packaged_defaults_are_the_configs_paper_constants():
    with open(os.path.join(ROOT, "config.yaml")) as fh:
        repo = yaml.safe_load(fh)
    assert sbconfig.packaged_defaults()["model_defaults"] == repo["model_defaults"]


def test_train_settings_from_defaults_and_overrides():
    cfg = sbconfig.packaged_defaults()
    hp, training = sbconfig.resolve_training_run(
        cfg, None, "sams_vae", ["n_latent=7", "lr=0.01", "mean_field_encoder=true"])
    assert hp["n_latent"] == 7 and hp["mean_field_encoder"] is True
    assert hp["encoder_n_hidden"] == 400 and hp["mask_prior_prob"] == 0.01  # the paper's
    assert training["lr"] == 0.01 and training["max_steps"] == 1000  # the schema's default
    with pytest.raises(sbconfig.ConfigError, match="did you mean 'n_latent'"):
        sbconfig.resolve_training_run(cfg, None, "sams_vae", ["n_latnt=3"])
    with pytest.raises(sbconfig.ConfigError, match="n_latent"):
        sbconfig.resolve_training_run(cfg, None, "sams_vae", ["n_latent=many"])
    with pytest.raises(sbconfig.ConfigError, match="expected key=value"):
        sbconfig.resolve_training_run(cfg, None, "sams_vae", ["n_latent"])
    with pytest.raises(sbconfig.ConfigError, match="unknown model 'nope'"):
        sbconfig.resolve_training_run(cfg, None, "nope")


def test_evaluate_identity_comes_from_the_runs_summary(tmp_path):
    from samsbench.stages import evaluate

    (tmp_path / "summary.json").write_text(json.dumps(
        {"experiment": "e", "dataset": "d", "model": "m", "family": "sams_vae", "split": "s",
         "seed": 3, "steps": 10}))
    assert evaluate.run_identity(str(tmp_path)) == {
        "experiment": "e", "dataset": "d", "model": "m", "family": "sams_vae", "split": "s",
        "seed": 3}


def test_help_imports_no_heavy_module():
    # --help answers fast because the parser imports neither torch nor pandas
    code = ("import sys; from samsbench import cli; cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'pandas', 'anndata', 'samsbench.stages') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_verb_that_cannot_import_fails_loudly(monkeypatch, capsys, tmp_path):
    from samsbench import cli

    import samsbench.stages

    # the verb's module cannot be imported (as when it or a dependency is broken)
    monkeypatch.setitem(sys.modules, "samsbench.stages.data", None)
    monkeypatch.delattr(samsbench.stages, "data", raising=False)
    assert cli.main(["simulate", "--out", str(tmp_path / "x.h5ad")]) == 3
    err = capsys.readouterr().err
    assert "samsbench simulate: error: cannot import" in err and "samsbench.stages.data" in err


def test_conda_environment_pins_every_dependency_without_a_path():
    import re
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    with open(os.path.join(ROOT, "envs", "samsbench.yaml")) as fh:
        env = yaml.safe_load(fh)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = dict(p.split("==") for p in pip)
    assert all("/" not in p and not p.startswith("-e") for p in pip), pip
    for dep in deps:
        name = re.split(r"[<>=!~ ]", dep)[0].lower()
        if name != "snakemake-executor-plugin-slurm":  # the cluster executor, not a job's
            assert name in pinned, f"{name} missing from envs/samsbench.yaml"


def test_readme_example_experiment_is_a_valid_config(tmp_path):
    import re

    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "experiments:" in b)
    example = yaml.safe_load(block)
    with open(os.path.join(ROOT, "config.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    for key, value in example.items():  # the README's blocks added to the default config
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    cfg = sbconfig.validate(cfg)
    assert [r["model"] for r in sbconfig.runs(cfg, "mine")][:1] == ["sams_vae"]
    assert len(sbconfig.runs(cfg, "mine")) == 6 * 3


@pytest.mark.parametrize("path", sorted(os.listdir(os.path.join(ROOT, "workflow", "report"))))
def test_captions_render_from_the_config(path):
    # as snakemake --report does: Jinja with the run's config and wildcards, then reST
    import jinja2
    from docutils.core import publish_parts

    cfg = sbconfig.load(os.path.join(ROOT, "config.yaml"))
    experiment = ("norman_ood" if path.startswith("paper_norman") else
                  "replogle" if "replogle" in path else "simulated")

    class Snakemake:
        config = cfg
        wildcards = type("W", (), {"experiment": experiment})

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    with open(os.path.join(ROOT, "workflow", "report", path)) as fh:
        text = env.from_string(fh.read()).render(snakemake=Snakemake, files=[], categories={})
    publish_parts(text, writer="html", settings_overrides={"halt_level": 2,
                                                            "report_level": 5})
    if path in ("ate_metrics.rst", "iwelbo.rst"):
        evaluation = cfg["experiments"]["simulated"]["evaluation"]
        number = evaluation["ate_particles" if path == "ate_metrics.rst" else "iwelbo_particles"]
        assert f"{number:,}" in text and "2,500" not in text


def test_leaderboard_of_a_grid_pools_splits_into_one_row_per_model():
    rows = []
    for split in range(report.MAX_SPLITS + 1):
        rows += [{**r, "split": f"s{split}"} for r in
                 _rows("a", "sams_vae", "ate_pearson", "test", [float(split)])]
    board = report.leaderboard(pd.DataFrame(rows))
    assert list(board["split"]) == ["all"] and board["seeds"].iloc[0] == report.MAX_SPLITS + 1
    assert board["mean"].iloc[0] == pytest.approx(np.mean(range(report.MAX_SPLITS + 1)))


def test_a_library_the_dataset_lacks_gets_one_warning_and_no_figure(tmp_path):
    from helpers import TINY

    from samsbench.data import contract
    from samsbench.data.simulate import simulate

    adata = simulate(**TINY)
    del adata.uns["pathways"], adata.uns["simulation"]  # a user's screen: no annotation
    contract.write(adata, tmp_path / "mine.h5ad")
    config = {"run": ["mine"], "datasets": {"mine": {"source": "h5ad", "path": "mine.h5ad"}},
              "splits": {"random": {"kind": "random", "seed": 0}},
              "models": {"additive_mean": {"family": "additive_mean"}},
              "experiments": {"mine": {"dataset": "mine", "splits": ["random"],
                                       "models": ["additive_mean"]}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    out = subprocess.run([snakemake, "--snakefile", os.path.join(ROOT, "Snakefile"),
                          "--directory", str(tmp_path), "-n", "--quiet", "rules"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = subprocess.run([snakemake, "--snakefile", os.path.join(ROOT, "Snakefile"),
                           "--directory", str(tmp_path), "-n", "--forceall"],
                          capture_output=True, text=True).stdout
    assert "top_terms_KEGG_2021_Human.png" in plan and "top_terms_pathways.png" not in plan
    assert out.stderr.count("has no 'pathways' annotation") == 1


def test_every_rule_prints_a_message():
    import glob
    import re

    for path in glob.glob(os.path.join(ROOT, "workflow", "rules", "*.smk")):
        text = open(path).read()
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, re.S | re.M):
            assert "\n    message:\n" in body, f"{os.path.basename(path)}: rule {name} has no message"


def test_iwelbo_figure_zooms_to_a_one_nat_difference():
    import matplotlib.pyplot as plt

    table = pd.DataFrame([
        {"model": m, "family": f, "metric": metric, "subset": subset, "split": "s", "seed": 0,
         "value": v + (0.3 if metric == "val_iwelbo" else 0.0)}
        for m, f, v in (("ref", "sams_vae", -520.0), ("other", "cpa_vae", -519.0))
        for metric, subset in (("test_iwelbo", "test"), ("val_iwelbo", "val"))])
    models = pd.DataFrame({"model": ["ref", "other", "base"],
                           "family": ["sams_vae", "cpa_vae", "control_mean"]})
    panels = [("test_iwelbo", "test", "x"), ("val_iwelbo", "val", "x")]
    fig = pe.metric_dots(pe.relative_to(table, "ref"), panels, models, "t",
                         {("base", "test_iwelbo"): "no likelihood (baseline)",
                          ("base", "val_iwelbo"): "no likelihood (baseline)"},
                         reference_line=0.0, reference="ref")
    try:
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            assert hi - lo < 2.0 and lo < 0.0 < 1.0 < hi  # both points, 1 nat apart, visible
            texts = [t.get_text() for t in ax.texts]
            assert "no value" not in texts and "no likelihood (baseline)" in texts
            assert "reference" in texts and "1" in texts  # the mean difference, written
    finally:
        plt.close(fig)


def test_the_replicate_ceiling_is_never_the_best_and_iwelbo_gets_no_normalised_column():
    rows = (_rows("a", "sams_vae", "ate_pearson", "test", [0.5], [0.4])
            + _rows("r", "replicate", "ate_pearson", "test", [0.9], [1.0])
            + _rows("a", "sams_vae", "test_iwelbo", "test", [-10.0], [math.nan]))
    board = report.leaderboard(pd.DataFrame(rows)).set_index(["model", "metric"])
    assert board.loc[("a", "ate_pearson"), "best"] and not board.loc[("r", "ate_pearson"), "best"]
    assert board.loc[("a", "ate_pearson"), "normalised_best"]
    page = report.leaderboard_html(board.reset_index(), "e").replace("<wbr>", "")
    assert "ate_pearson normalised" in page and "test_iwelbo normalised" not in page


def test_leaderboard_marks_best_only_beyond_noise_and_shows_differences():
    rows = (_rows("lin", "linear", "pearson_delta", "test", [0.60, 0.60])
            + _rows("a", "sams_vae", "pearson_delta", "test", [0.62, 0.61])
            + _rows("a", "sams_vae", "ate_pearson", "test", [0.7, 0.7])
            + _rows("lin", "linear", "ate_pearson", "test", [0.5, 0.5]))
    metrics = pd.DataFrame(rows)
    split = metrics["split"].iloc[0]
    differences = pd.DataFrame([
        {"split": split, "metric": "pearson_delta", "model": "a", "best": False,
         "diff_baseline": 0.015, "diff_lo": -0.01, "diff_hi": 0.04, "baseline": "lin"},
        {"split": split, "metric": "pearson_delta", "model": "lin", "best": False,
         "diff_baseline": 0.0, "diff_lo": 0.0, "diff_hi": 0.0, "baseline": "lin"}])
    board = report.leaderboard(metrics, differences).set_index(["model", "metric"])
    assert not board["best"].any()  # the lead is within noise; ate_pearson has no bootstrap
    assert board.loc[("a", "pearson_delta"), "diff_lo"] == pytest.approx(-0.01)
    page = report.leaderboard_html(board.reset_index(), "e")
    assert "★" not in page.replace("★ the best", "")
    assert "Difference to the best simple baseline" in page and "[-0.010, +0.040]" in page


def test_leaderboard_says_why_a_normalised_column_is_absent_and_cost_names_the_load():
    rows = (_rows("a", "sams_vae", "pearson_delta", "test", [0.5], [math.nan])
            + _rows("r", "replicate", "pearson_delta", "test", [0.9], [math.nan]))
    metrics = pd.DataFrame(rows).assign(
        normalised_note="not discriminative here: ceiling 0.975 vs best simple baseline 0.971")
    page = report.leaderboard_html(report.leaderboard(metrics), "e")
    assert "not discriminative here: ceiling 0.975 vs best simple baseline 0.971" in page
    assert "white-space:normal" in page  # headers wrap: no horizontal scroll
    cost = pd.DataFrame([{"model": "m", "family": "f", "step": "train", "jobs": 1,
                          "seconds_mean": 1.0, "seconds_total": 1.0, "max_rss_mb": 1.0,
                          "steps_per_second": 2.0}])
    assert "load" in report.cost_html(cost, "e")


def test_mask_heatmaps_get_a_caveat_when_masks_stay_near_their_start():
    from samsbench.stages.figures import mask_caveat

    assert "not learned yet" in mask_caveat(np.full((4, 5), 0.45))
    assert mask_caveat(np.r_[np.full(10, 0.02), np.full(2, 0.5)]) == ""


def test_training_curves_plot_the_reconstruction_term_not_the_loss():
    from samsbench.plots.experiment import training_curves

    runs = [{"model": m, "family": m, "split": "s", "seed": 0} for m in ("a", "b")]
    hist = [pd.DataFrame({"step": [1, 2], "val_loss": [600.0 + k, 590.0 + k],
                          "val_reconstruction": [580.0, 570.0]}) for k in (0, 10)]
    fig = training_curves(runs, hist)
    ax = fig.axes[0]
    assert "reconstruction" in ax.get_title()
    assert max(line.get_ydata().max() for line in ax.get_lines() if len(line.get_ydata())) == 580
