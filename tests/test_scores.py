"""Issue-13 scores: baseline-normalised values, Systema-style metrics, GEARS' combo_seen tags."""

import math

import numpy as np
import pandas as pd
import pytest

from samsbench import metrics
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
