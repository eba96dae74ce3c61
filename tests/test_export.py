"""``samsbench export --format cell-eval``: what the files hold, and cell-eval itself agreeing
with our pearson_delta on a tiny run."""

import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers import for_family, tiny_dataset
from samsbench import metrics
from samsbench.cli import main
from samsbench.stages import evaluate, export
from samsbench.stages import train as train_stage


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    data, split = tiny_dataset(str(d), kind="ood", fraction=0.5, n_doubles=10)
    run = d / "run"
    train_stage.train(data, split, {"family": "linear"}, {}, str(run), 0, progress=False)
    evaluate.predict(data, split, str(run / "model.pt"), str(run / "predictions.h5ad"))
    return d, data, split, run


def test_export_files_mean_mode(baseline_run):
    d, data, split, run = baseline_run
    out = d / "cli_export"
    assert main(["export", "--format", "cell-eval", "--run", str(run), "--data", data,
                 "--splits", split, "--out", str(out), "--cells", "7"]) == 0
    pred, real = ad.read_h5ad(out / "predicted.h5ad"), ad.read_h5ad(out / "real.h5ad")
    source = ad.read_h5ad(data)
    split_labels = pd.read_csv(split, sep="\t")["split"].to_numpy()
    labels = source.obs["perturbation"].astype(str).to_numpy()
    test = sorted(set(labels[split_labels == "test"]) - {"non-targeting"})
    assert len(test) >= 2
    assert list(pred.var_names) == list(real.var_names) == list(source.var_names)
    assert pred.uns["normalisation"] == real.uns["normalisation"] == export.NORMALISATION
    assert pred.uns["prediction_mode"] == "mean"
    counts = pred.obs["target_gene"].value_counts()
    assert all(counts[t] == 7 for t in test)
    # the same REAL control cells in both files, values ln(1 + CP10k)
    n_control = int((labels == "non-targeting").sum())
    assert counts["non-targeting"] == n_control
    np.testing.assert_array_equal(pred.X[pred.obs["target_gene"] == "non-targeting"],
                                  real.X[real.obs["target_gene"] == "non-targeting"])
    x = source.X.toarray()[labels == "non-targeting"]
    expected = np.log1p(1e4 * x / x.sum(1, keepdims=True))
    np.testing.assert_allclose(real.X[real.obs["target_gene"] == "non-targeting"], expected,
                               rtol=1e-6)
    # real: every cell of the test perturbations, nothing else
    assert sorted(set(real.obs["target_gene"])) == sorted(test + ["non-targeting"])
    assert len(real) == int(np.isin(labels, test + ["non-targeting"]).sum())


def test_export_sample_mode_draws_cells_from_the_model(baseline_run, tmp_path):
    d, data, split, _ = baseline_run
    run = tmp_path / "cpa"
    train_stage.train(data, split, {"family": "cpa_vae", **for_family("cpa_vae")},
                    {"max_steps": 3, "batch_size": 64, "val_every": 3}, str(run), 0,
                    progress=False)
    paths = export.export_cell_eval(str(run / "model.pt"), data, split, str(tmp_path / "x"),
                                    n_cells=4, mode="sample")
    pred = ad.read_h5ad(paths["predicted"])
    assert pred.uns["prediction_mode"] == "sample"
    cells = pred[pred.obs["target_gene"] != "non-targeting"].X
    assert cells.min() >= 0 and len(np.unique(cells.round(6), axis=0)) == len(cells)
    with pytest.raises(ValueError, match="export mode"):
        export.export_cell_eval(str(run / "model.pt"), data, split, str(tmp_path / "y"),
                                mode="median")


@pytest.mark.slow
def test_cell_eval_pearson_delta_equals_ours(baseline_run):
    """cell-eval's own scorer on the export of a real (tiny) run, mean-prediction mode."""
    pytest.importorskip("cell_eval")
    d, data, split, run = baseline_run
    paths = export.export_cell_eval(str(run / "model.pt"), data, split, str(d / "ce"),
                                    n_cells=3)
    # the linear baseline's means stay >= 0 here, so no value was clipped: exact equality
    assert ad.read_h5ad(paths["predicted"]).uns["clipped_values"] == 0
    ours = evaluate.score_predictions(run / "predictions.h5ad", data, split)
    ours = ours[ours["metric"] == "pearson_delta"].set_index("subset")["value"]
    exe = shutil.which("cell-eval") or str(__import__("pathlib").Path(sys.executable).parent
                                           / "cell-eval")
    subprocess.run([exe, "run", "-ap", paths["predicted"], "-ar", paths["real"],
                    "-o", str(d / "ce_out"), "--profile", "minimal"],
                   check=True, capture_output=True)
    theirs = pd.read_csv(d / "ce_out" / "results.csv")
    assert len(theirs) >= 2
    # per perturbation: our pearson_delta over a one-perturbation subset
    pred_ate = evaluate.read_predictions(run / "predictions.h5ad", ad.read_h5ad(data))
    true_ate = metrics.data_ate(ad.read_h5ad(data))
    for _, row in theirs.iterrows():
        one = metrics.ate_metrics(pred_ate, true_ate, {"p": [row["perturbation"]]})
        value = one.set_index("metric")["value"]["pearson_delta"]
        assert row["pearson_delta"] == pytest.approx(value, abs=1e-6)
    assert theirs["pearson_delta"].mean() == pytest.approx(ours["test"], abs=1e-6)


def test_the_cli_offers_the_stage_export_modes():
    from samsbench.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    mode = next(a for a in sub.choices["export"]._actions if a.dest == "mode")
    assert tuple(mode.choices) == export.MODES
