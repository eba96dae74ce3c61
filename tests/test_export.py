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
    # real: the test cells of the test perturbations (the held-out truth) and every control
    assert sorted(set(real.obs["target_gene"])) == sorted(test + ["non-targeting"])
    held_out = (np.isin(labels, test) & (split_labels == "test")) | (labels == "non-targeting")
    assert len(real) == int(held_out.sum()) < int(np.isin(labels, test + ["non-targeting"]).sum())


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


def _negative_predictions(run, data, path):
    """The run's predictions with every test ATE pushed far below minus the control mean on
    half the genes: a mean export must clip them."""
    from samsbench.data import contract

    pred = ad.read_h5ad(run / "predictions.h5ad")
    control = contract.control_label(ad.read_h5ad(data))
    X = np.asarray(pred.X, dtype=np.float64).copy()
    rows = pred.obs["perturbation"].astype(str).to_numpy() != control
    X[np.ix_(rows, np.arange(0, X.shape[1], 2))] -= 12.0
    means = pd.DataFrame(X, index=pred.obs["perturbation"].astype(str), columns=pred.var_names)
    evaluate.write_predictions(means, path, control)
    return path


def test_clipping_is_reported_and_no_clip_round_trips(baseline_run, tmp_path):
    d, data, split, run = baseline_run
    pred_path = _negative_predictions(run, data, tmp_path / "neg.h5ad")
    clipped = export.export_cell_eval(str(run / "model.pt"), data, split, str(tmp_path / "c"),
                                      n_cells=2, mode="mean", predictions_path=str(pred_path))
    uns = ad.read_h5ad(clipped["predicted"]).uns
    assert uns["clipped_values"] > 0 and 0.4 < uns["clipped_fraction"] <= 0.5 + 1e-9
    kept = export.export_cell_eval(str(run / "model.pt"), data, split, str(tmp_path / "k"),
                                   n_cells=2, mode="mean", predictions_path=str(pred_path),
                                   clip=False)
    pred, real = ad.read_h5ad(kept["predicted"]), ad.read_h5ad(kept["real"])
    assert pred.uns["clipped_values"] == 0 and pred.X.min() >= 0
    assert pred.uns["gene_offsets"].max() > 0  # shifted, in both files, instead of clipped
    np.testing.assert_array_equal(pred.uns["gene_offsets"], real.uns["gene_offsets"])
    # cell-eval's pearson_delta, by hand: per perturbation, the correlation of the predicted
    # and the real mean minus the control mean; it equals ours on the unclipped export
    ours = evaluate.score_predictions(pred_path, data, split)
    ours = ours[(ours["metric"] == "pearson_delta") & (ours["subset"] == "test")]["value"]

    def deltas(a):
        means = pd.DataFrame(np.asarray(a.X, dtype=np.float64)).groupby(
            a.obs["target_gene"].astype(str).to_numpy()).mean()
        return means.drop(index="non-targeting") - means.loc["non-targeting"]

    p, t = deltas(pred), deltas(real)
    by_hand = np.mean([np.corrcoef(p.loc[k], t.loc[k])[0, 1] for k in t.index])
    assert by_hand == pytest.approx(float(ours.iloc[0]), abs=1e-5)
    p_clipped = deltas(ad.read_h5ad(clipped["predicted"]))
    clipped_value = np.mean([np.corrcoef(p_clipped.loc[k], t.loc[k])[0, 1] for k in t.index])
    assert abs(clipped_value - by_hand) > 1e-3  # the clip changes the score


def _cell_eval(paths, out):
    exe = shutil.which("cell-eval") or str(__import__("pathlib").Path(sys.executable).parent
                                           / "cell-eval")
    subprocess.run([exe, "run", "-ap", paths["predicted"], "-ar", paths["real"],
                    "-o", str(out), "--profile", "minimal"], check=True, capture_output=True)
    return pd.read_csv(out / "results.csv")


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
    theirs = _cell_eval(paths, d / "ce_out")
    assert len(theirs) >= 2
    # per perturbation: our pearson_delta over a one-perturbation subset, on its test cells
    pred_ate = evaluate.read_predictions(run / "predictions.h5ad", ad.read_h5ad(data))
    labels = pd.read_csv(split, sep="\t")["split"].to_numpy()
    true_ate = metrics.truth_by_split(ad.read_h5ad(data), labels)["test"][0]
    for _, row in theirs.iterrows():
        one = metrics.ate_metrics(pred_ate, true_ate, {"p": [row["perturbation"]]})
        value = one.set_index("metric")["value"]["pearson_delta"]
        assert row["pearson_delta"] == pytest.approx(value, abs=1e-6)
    assert theirs["pearson_delta"].mean() == pytest.approx(ours["test"], abs=1e-6)


@pytest.mark.slow
def test_cell_eval_agrees_with_ours_on_the_unclipped_export(baseline_run, tmp_path):
    """A prediction most of which a clip would change: --no-clip round-trips through
    cell-eval's own scorer."""
    pytest.importorskip("cell_eval")
    d, data, split, run = baseline_run
    pred_path = _negative_predictions(run, data, tmp_path / "neg.h5ad")
    paths = export.export_cell_eval(str(run / "model.pt"), data, split, str(tmp_path / "ce"),
                                    n_cells=3, mode="mean", predictions_path=str(pred_path),
                                    clip=False)
    ours = evaluate.score_predictions(pred_path, data, split)
    ours = ours[(ours["metric"] == "pearson_delta") & (ours["subset"] == "test")]["value"]
    theirs = _cell_eval(paths, tmp_path / "out")
    assert theirs["pearson_delta"].mean() == pytest.approx(float(ours.iloc[0]), abs=1e-6)


def test_the_cli_offers_the_stage_export_modes():
    from samsbench.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    mode = next(a for a in sub.choices["export"]._actions if a.dest == "mode")
    assert tuple(mode.choices) == export.MODES
