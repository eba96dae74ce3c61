"""Issue-13 scores: baseline-normalised values, Systema-style metrics, GEARS' combo_seen tags."""

import math

import numpy as np
import pandas as pd
import pytest

from samsbench import ceiling, metrics
from samsbench import models as registry

ROLES = registry.roles()  # {family: model / baseline / ceiling}, declared on each family


def _table(rows):
    base = {"experiment": "e", "dataset": "d", "split": "s", "seed": 0, "subset": "test"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_normalised_score_hand_case():
    rows = []
    for metric, values in (("pearson_delta", {"control_mean": 0.2, "additive_mean": 0.5,
                                               "train_mean": 0.4, "linear": 0.45,
                                               "replicate": 0.9, "sams_vae": 0.7}),
                           ("effect_rmse", {"control_mean": 1.0, "additive_mean": 0.6,
                                            "train_mean": 0.8, "linear": 0.7,
                                            "replicate": 0.2, "sams_vae": 0.5})):
        for family, value in values.items():
            rows.append({"model": family, "family": family, "metric": metric, "value": value})
    out = metrics.normalised_scores(_table(rows), ROLES).set_index(["metric", "model"])
    # higher is better: b = 0.5 (additive_mean), r = 0.9 -> (0.7 - 0.5) / 0.4 = 0.5
    assert out.loc[("pearson_delta", "sams_vae"), "normalised"] == pytest.approx(0.5)
    assert out.loc[("pearson_delta", "control_mean"), "normalised"] == pytest.approx(-0.75)
    # lower is better: b = 0.6 (additive_mean), r = 0.2 -> (0.5 - 0.6) / (0.2 - 0.6) = 0.25
    assert out.loc[("effect_rmse", "sams_vae"), "normalised"] == pytest.approx(0.25)
    assert out.loc[("effect_rmse", "replicate"), "normalised"] == pytest.approx(1.0)
    assert out.loc[("effect_rmse", "additive_mean"), "normalised"] == pytest.approx(0.0)
    assert (out["normalised_note"] == "").all()


def test_normalised_score_averages_seeds_and_states_why_it_is_undefined():
    rows = [
        {"model": "lin", "family": "linear", "metric": "ate_pearson", "value": 0.4, "seed": 0},
        {"model": "lin", "family": "linear", "metric": "ate_pearson", "value": 0.6, "seed": 1},
        {"model": "rep", "family": "replicate", "metric": "ate_pearson", "value": 1.0},
        {"model": "m", "family": "sams_vae", "metric": "ate_pearson", "value": 0.75},
        # the ceiling is worse than the baseline here
        {"model": "lin", "family": "linear", "metric": "ate_r2", "value": 0.5},
        {"model": "rep", "family": "replicate", "metric": "ate_r2", "value": 0.4},
        {"model": "m", "family": "sams_vae", "metric": "ate_r2", "value": 0.3},
        # likelihood metric: no baseline, no ceiling
        {"model": "m", "family": "sams_vae", "metric": "test_iwelbo", "value": -300.0},
        # a baseline but no ceiling
        {"model": "lin", "family": "linear", "metric": "effect_rmse", "value": 0.5},
        {"model": "m", "family": "sams_vae", "metric": "effect_rmse", "value": 0.4},
    ]
    out = metrics.normalised_scores(_table(rows), ROLES)
    assert len(out) == len(rows) and list(out["value"]) == [r["value"] for r in rows]
    m = out[out["model"] == "m"].set_index("metric")
    assert m.loc["ate_pearson", "normalised"] == pytest.approx((0.75 - 0.5) / (1.0 - 0.5))
    assert math.isnan(m.loc["ate_r2", "normalised"])
    assert "not better than the best simple baseline" in m.loc["ate_r2", "normalised_note"]
    assert m.loc["test_iwelbo", "normalised_note"].startswith("no simple baseline")
    assert m.loc["effect_rmse", "normalised_note"].startswith("no replicate ceiling")


def test_systema_pearson_and_centroid_accuracy_hand_case():
    genes = ["g0", "g1", "g2", "g3"]
    true = pd.DataFrame([[1.0, 0.0, 2.0, 1.0], [3.0, 1.0, 0.0, 1.0], [1.0, 2.0, 2.0, 0.0]],
                        index=["A", "B", "C"], columns=genes)
    pred = pd.DataFrame([[2.0, 0.0, 2.0, 1.0], [1.0, 2.0, 2.0, 0.5], [1.0, 2.0, 2.0, 0.0]],
                        index=["A", "B", "C"], columns=genes)
    cells = pd.Series({"A": 1, "B": 2, "C": 1})
    ref = metrics.perturbed_reference(true, cells)
    np.testing.assert_allclose(ref, [2.0, 1.0, 1.0, 0.75])  # (1*A + 2*B + 1*C) / 4
    out = metrics.ate_metrics(pred, true, {"all": ["A", "B", "C"]}, ref)
    value = out.set_index("metric")["value"]
    expected = np.mean([np.corrcoef(pred.loc[p] - ref, true.loc[p] - ref)[0, 1] for p in "ABC"])
    assert value["pearson_delta_perturbed"] == pytest.approx(expected)
    # A's prediction is closest to A, B's to C (wrong), C's to C: 2 of 3
    assert value["centroid_accuracy"] == pytest.approx(2 / 3)


def test_predicting_the_average_perturbation_scores_high_on_pearson_delta_only():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1, 50)
    true = pd.DataFrame(shared + 0.3 * rng.normal(0, 1, (8, 50)),
                        index=[f"P{i}" for i in range(8)], columns=[f"g{j}" for j in range(50)])
    mean = pd.DataFrame(np.tile(true.mean().to_numpy(), (8, 1)), index=true.index,
                        columns=true.columns)
    mean += 1e-3 * rng.normal(0, 1, mean.shape)  # not exactly constant after centring
    ref = metrics.perturbed_reference(true, pd.Series(1, index=true.index))
    subsets = {"all": list(true.index)}
    scores = metrics.ate_metrics(mean, true, subsets, ref).set_index("metric")["value"]
    assert scores["pearson_delta"] > 0.9
    assert abs(scores["pearson_delta_perturbed"]) < 0.2
    # without a reference, the reference metrics are left out
    plain = metrics.ate_metrics(mean, true, subsets)
    assert list(plain["metric"]) == list(metrics.METRICS)


def test_combo_seen_tags():
    labels = ["ctrl", "A", "B", "C", "A+B", "A+C", "C+D", "D+E", "A+B", "B"]
    split = ["train", "train", "train", "test", "test", "test", "test", "test", "train", "test"]
    # seen in training as singles: A, B (C only in test)
    assert metrics.combo_seen_subsets(labels, split, "ctrl") == {
        "combo_seen0": ["C+D", "D+E"], "combo_seen1": ["A+C"], "combo_seen2": ["A+B"]}


def test_score_table_puts_raw_and_normalised_side_by_side():
    rows = []
    for family, value, seed in (("linear", 0.4, 0), ("replicate", 0.8, 0), ("sams_vae", 0.5, 0),
                                ("sams_vae", 0.7, 1)):
        rows.append({"model": family, "family": family, "metric": "pearson_delta",
                     "value": value, "seed": seed})
    table = metrics.score_table(metrics.normalised_scores(_table(rows), ROLES))
    assert list(table["model"]) == ["replicate", "sams_vae", "linear"]
    row = table.set_index("model").loc["sams_vae"]
    assert row["pearson_delta"] == pytest.approx(0.6)
    assert row["pearson_delta_normalised"] == pytest.approx(0.5)  # (0.6 - 0.4) / (0.8 - 0.4)


def test_aggregate_adds_the_normalised_score_and_the_score_table_stage_reads_it(tmp_path):
    from samsbench.stages import evaluate

    paths = []
    for family, value in (("linear", 0.4), ("replicate", 0.8), ("sams_vae", 0.7)):
        path = tmp_path / f"{family}.tsv"
        _table([{"model": family, "family": family, "metric": "pearson_delta",
                 "value": value}]).to_csv(path, sep="\t", index=False)
        paths.append(str(path))
    table = evaluate.aggregate(paths, str(tmp_path / "metrics.tsv"))
    written = pd.read_csv(tmp_path / "metrics.tsv", sep="\t")
    assert list(written.columns) == list(table.columns)
    assert written.set_index("model").loc["sams_vae", "normalised"] == pytest.approx(0.75)
    scores = evaluate.score_table(str(tmp_path / "metrics.tsv"), str(tmp_path / "scores.tsv"))
    assert list(scores["model"]) == ["replicate", "sams_vae", "linear"]
    assert pd.read_csv(tmp_path / "scores.tsv", sep="\t").shape == scores.shape


# ------------------------------------------------------------- the truth and the ceiling (25, 22)


def test_the_ceiling_is_what_the_true_effects_score_against_the_observed_truth():
    """Known true effects mu; the truth T is mu plus noise, measured as two halves A, B.
    Over many draws, mu scored against T averages the ceiling estimated from A and B alone
    (never above it beyond its noise; per perturbation the square root makes the estimate
    slightly low, by O(1/genes): measured 0.003-0.011 at 500-1,000 genes, 0.03 at 40); a noisy
    predictor stays below."""
    rng = np.random.default_rng(0)
    mu = rng.normal(0, 1, size=(30, 500)) * rng.uniform(0.2, 1.5, size=(30, 1))
    names = ("ate_pearson", "pearson_delta", "ate_r2", "effect_rmse")
    scored, bounds, noisy = {m: [] for m in names}, {m: [] for m in names}, []
    top = None
    for _ in range(100):
        a, b = (mu + rng.normal(0, 1.2, size=mu.shape) for _ in range(2))
        truth = (a + b) / 2
        top = metrics.top_gene_indices(truth)
        bound = ceiling.ceiling_values(a, b)
        for m in names:
            scored[m].append(metrics.METRICS[m](mu, truth, top))
            bounds[m].append(bound[m])
        guess = mu + rng.normal(0, 1.0, size=mu.shape)
        noisy.append(metrics.METRICS["pearson_delta"](guess, truth, top))
    for m in names:
        diff = np.asarray(scored[m]) - np.asarray(bounds[m])
        se = diff.std(ddof=1) / math.sqrt(len(diff))
        assert -4 * se < diff.mean() < 0.02, (m, diff.mean(), se)
    assert np.mean(noisy) < np.mean(bounds["pearson_delta"]) - 0.05
    # the split-half score itself understates it (each half has half the cells)
    a, b = (mu + rng.normal(0, 1.2, size=mu.shape) for _ in range(2))
    half = metrics.METRICS["pearson_delta"](a, b, top)
    assert half < ceiling.ceiling_values(a, b)["pearson_delta"] - 0.05


def test_attenuation_bound_hand_values():
    out = ceiling.attenuation_bound([0.6, 0.0, -0.3, 1.0, np.nan])
    assert out[0] == pytest.approx(math.sqrt(1.2 / 1.6))
    assert list(out[1:4]) == [0.0, 0.0, 1.0] and np.isnan(out[4])


def _memoriser_case(tmp_path):
    """Controls and 12 perturbations, every label's cells split half train, half test; the
    memoriser predicts each perturbation's mean of its TRAINING cells."""
    import anndata as ad
    import scipy.sparse as sp

    from samsbench.data import contract
    from samsbench.stages import evaluate

    rng = np.random.default_rng(1)
    genes, per = 30, 8
    base = rng.uniform(2, 20, size=genes)
    labels, rows = [], []
    for p in ["ctrl"] + [f"P{i}" for i in range(12)]:
        rate = base * (1 if p == "ctrl" else np.exp(rng.normal(0, 0.3, size=genes)))
        n = 40 if p == "ctrl" else per
        rows.append(rng.poisson(rate, size=(n, genes)))
        labels += [p] * n
    X = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))
    adata.uns["control_label"] = "ctrl"
    contract.write(adata, str(tmp_path / "data.h5ad"))
    split = np.array(["train", "test"] * (len(labels) // 2))
    pd.DataFrame({"cell_id": obs.index, "split": split}).to_csv(tmp_path / "split.tsv",
                                                               sep="\t", index=False)
    y = metrics.log_cp10k(X)
    lab = np.asarray(labels)
    train = pd.DataFrame(y[split == "train"]).groupby(lab[split == "train"]).mean()
    train.loc["ctrl"] = y[lab == "ctrl"].mean(0)  # every control cell
    train.columns = adata.var_names
    evaluate.write_predictions(train, tmp_path / "pred.h5ad", "ctrl")
    return y, lab, split


def test_held_out_cells_are_the_truth_and_the_paper_variant_is_labelled(tmp_path):
    from samsbench.stages import evaluate

    y, labels, split = _memoriser_case(tmp_path)
    out = evaluate.score_predictions(tmp_path / "pred.h5ad", tmp_path / "data.h5ad",
                                     tmp_path / "split.tsv").set_index(["metric", "subset"])["value"]
    perts = [f"P{i}" for i in range(12)]
    control = y[labels == "ctrl"].mean(0)  # all controls, train and test
    train = np.stack([y[(labels == p) & (split == "train")].mean(0) for p in perts]) - control
    test = np.stack([y[(labels == p) & (split == "test")].mean(0) for p in perts]) - control
    every = np.stack([y[labels == p].mean(0) for p in perts]) - control
    held_out = np.corrcoef(train.ravel(), test.ravel())[0, 1]
    paper = np.corrcoef(train.ravel(), every.ravel())[0, 1]
    assert out["ate_pearson", "test"] == pytest.approx(held_out, abs=1e-9)
    assert out["paper_ate_pearson", "test"] == pytest.approx(paper, abs=1e-9)
    # the memoriser looks better against a truth that contains its own training cells
    assert out["paper_ate_pearson", "test"] > out["ate_pearson", "test"] + 0.05
    assert ("paper_pearson_delta", "test") not in out  # only the paper's four metrics


def _bootstrap_rows(truth, preds: dict, seeds=(0, 1)):
    frames = []
    for (model, family), pred in preds.items():
        for seed in seeds:
            rows = ceiling.perturbation_rows(pred, truth)
            frames.append(rows.assign(model=model, family=family, split="s", seed=seed,
                                      perturbation=[f"P{i}" for i in range(len(truth))]))
    return pd.concat(frames, ignore_index=True)


def test_bootstrap_rows_give_the_metrics_values():
    rng = np.random.default_rng(3)
    truth, pred = rng.normal(size=(12, 40)), rng.normal(size=(12, 40))
    frame = lambda x: pd.DataFrame(x, index=[f"P{i}" for i in range(12)])  # noqa: E731
    expected = metrics.ate_metrics(frame(pred), frame(truth), {"test": list(frame(pred).index)})
    expected = expected.set_index("metric")["value"]
    got = ceiling.metrics_from_rows(np.ones(12), ceiling.perturbation_rows(pred, truth))
    for metric in ("ate_pearson", "ate_r2", "effect_rmse", "pearson_delta",
                   "pearson_delta_top20"):
        assert got[metric][0] == pytest.approx(expected[metric], abs=1e-9), metric


def test_paired_bootstrap_marks_a_best_only_beyond_noise():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(40, 60))
    base = truth + rng.normal(0, 1.5, size=truth.shape)
    close = base + rng.normal(0, 0.05, size=truth.shape)  # indistinguishable from the baseline
    good = truth + rng.normal(0, 0.5, size=truth.shape)
    tied = _bootstrap_rows(truth, {("lin", "linear"): base, ("m", "sams_vae"): close})
    out = ceiling.paired_bootstrap(tied, ROLES, n_boot=300).set_index(["metric", "model"])
    assert not out["best"].any()  # a lead within noise is no lead
    row = out.loc[("pearson_delta", "m")]
    assert row["diff_lo"] < row["diff_baseline"] < row["diff_hi"] and row["diff_lo"] < 0 < row["diff_hi"]
    clear = _bootstrap_rows(truth, {("lin", "linear"): base, ("m", "sams_vae"): good})
    out = ceiling.paired_bootstrap(clear, ROLES, n_boot=300).set_index(["metric", "model"])
    assert out.loc[("pearson_delta", "m"), "best"] and out.loc[("effect_rmse", "m"), "best"]
    assert out.loc[("pearson_delta", "m"), "diff_lo"] > 0
    assert out.loc[("pearson_delta", "m"), "baseline"] == "lin"
    # point values are the plain metrics (all perturbations, seeds averaged)
    assert out.loc[("pearson_delta", "m"), "value"] == pytest.approx(
        metrics.METRICS["pearson_delta"](good, truth, None))


def test_normalised_scores_say_not_discriminative_when_the_gap_is_noise():
    rows = [{"model": f, "family": f, "metric": "pearson_delta", "value": v}
            for f, v in (("additive_mean", 0.971), ("replicate", 0.975), ("sams_vae", 0.5))]
    differences = pd.DataFrame([{"split": "s", "metric": "pearson_delta", "model": "sams_vae",
                                 "gap_lo": -0.002, "gap_hi": 0.01, "discriminative": False}])
    out = metrics.normalised_scores(_table(rows), ROLES, differences).set_index("model")
    assert out["normalised"].isna().all()  # never -120
    note = out.loc["sams_vae", "normalised_note"]
    assert note.startswith("not discriminative here") and "0.975" in note and "0.971" in note
    kept = metrics.normalised_scores(_table(rows), ROLES,
                                       differences.assign(discriminative=True))
    assert kept.set_index("model").loc["sams_vae", "normalised"] == pytest.approx(
        (0.5 - 0.971) / (0.975 - 0.971))


def test_score_table_has_one_row_per_model_and_split():
    rows = [{"model": "m", "family": "sams_vae", "metric": "pearson_delta", "value": v,
             "split": split, "normalised": np.nan}
            for split, v in (("random", 0.8), ("ood", 0.2))]
    table = metrics.score_table(_table(rows)).set_index(["model", "split"])
    assert table.loc[("m", "random"), "pearson_delta"] == pytest.approx(0.8)
    assert table.loc[("m", "ood"), "pearson_delta"] == pytest.approx(0.2)  # never their mean


def test_runs_write_perturbation_rows_and_aggregate_bootstraps_them(tmp_path):
    """score() writes each run's test perturbation rows; aggregate() bootstraps them into
    differences.tsv, whose point values are the runs' metrics."""
    from helpers import tiny_dataset

    from samsbench.stages import evaluate
    from samsbench.stages import train as train_stage

    data, split = tiny_dataset(str(tmp_path), kind="random")
    metric_paths, row_paths = [], []
    for family in ("additive_mean", "train_mean", "replicate"):
        for seed in (0,):
            run = tmp_path / f"{family}{seed}"
            train_stage.train(data, split, {"family": family}, {}, str(run), seed,
                              progress=False)
            evaluate.predict(data, split, str(run / "model.pt"), str(run / "predictions.h5ad"))
            ident = {"experiment": "e", "model": family, "family": family, "split": "random",
                     "seed": seed}
            evaluate.score(ident, data, split, str(run / "predictions.h5ad"),
                           str(run / "model.pt"), str(run / "metrics.tsv"),
                           perturbations_path=str(run / "rows.tsv"))
            metric_paths.append(str(run / "metrics.tsv"))
            row_paths.append(str(run / "rows.tsv"))
    table = evaluate.aggregate(metric_paths[:2], str(tmp_path / "m.tsv"), row_paths[:2],
                               str(tmp_path / "d.tsv"))
    diffs = pd.read_csv(tmp_path / "d.tsv", sep="\t").set_index(["metric", "model"])
    plain = table[(table["subset"] == "test") & (table["model"] == "train_mean")]
    plain = plain.groupby("metric")["value"].mean()
    for metric in ("ate_pearson", "pearson_delta", "effect_rmse"):
        assert diffs.loc[(metric, "train_mean"), "value"] == pytest.approx(plain[metric],
                                                                           abs=1e-9)
    # with the ceiling: every normalised test score is given or says why not
    table = evaluate.aggregate(metric_paths, str(tmp_path / "m.tsv"), row_paths,
                               str(tmp_path / "d.tsv"))
    test = table[(table["subset"] == "test") & (table["metric"] == "pearson_delta")]
    assert (test["normalised"].notna() | (test["normalised_note"] != "")).all()
    diffs = pd.read_csv(tmp_path / "d.tsv", sep="\t")
    assert diffs["ceiling"].notna().all() and set(diffs["model"]) == {
        "additive_mean", "train_mean", "replicate"}
