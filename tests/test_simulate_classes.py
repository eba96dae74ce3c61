"""The default simulation's combination classes (issue 22; docs/simulation.md): the latent
shift of each class by hand, the classes recorded in the prepared data, the per-class subsets of
the metrics, and what each class means in the data (seeded numpy, no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from samsbench import metrics
from samsbench.data import contract, splits
from samsbench.data import simulate as sim
from samsbench.stages import evaluate

CLASSES = {c: 2 for c in sim.COMBINATION_CLASSES}
SMALL = dict(n_programs=2, targets_per_program=4, n_background=2, n_extra_dims=2, n_genes=40,
             cells_per_perturbation=20, n_control=60, combination_classes=CLASSES)


def test_class_shifts_by_hand():
    singles = ["A", "B", "C"]
    shift = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    labels = np.array(["non-targeting", "A", "A+B", "A+C", "B+C", "A+B+C"], dtype=object)
    pair_class = {"A+B": "synergy", "A+C": "buffering", "B+C": "dominant",
                  "A+B+C": "additive_latent"}
    out = sim._class_shifts(labels, singles, shift, pair_class, {"B+C": "C"})
    expected = [[0, 0], [1, 0],
                [sim.SYNERGY_GAIN * 1, sim.SYNERGY_GAIN * 2],    # gain x (A + B)
                [sim.BUFFERING_GAIN * 4, sim.BUFFERING_GAIN * -1],  # gain x (A + C)
                [3, -1],                                          # C alone
                [4, 1]]                                           # A + B + C
    np.testing.assert_allclose(out, expected)


def test_classes_are_recorded_and_the_old_world_is_unchanged():
    data = sim.simulate(**SMALL)
    info = data.uns["simulation"]
    assert sorted(info["combination_class"]) == sorted(
        [c for c in sim.COMBINATION_CLASSES for _ in range(2)])
    per_label = data.obs.groupby("perturbation", observed=True)[sim.CLASS_KEY].first()
    assert dict(zip(info["combinations"], info["combination_class"])) == {
        lab: c for lab, c in per_label.items() if "+" in lab}
    assert per_label["non-targeting"] == "control"
    assert set(per_label[[lab for lab in per_label.index if "+" not in lab
                          and lab != "non-targeting"]]) == {"single"}
    dominant = dict(zip(info["combinations"], info["dominant"]))
    for lab, c in zip(info["combinations"], info["combination_class"]):
        assert (dominant[lab] in lab.split("+")) if c == "dominant" else dominant[lab] == ""
    # without classes: no class column, and the draw of every other part is as before
    old = sim.simulate(**{**SMALL, "combination_classes": None, "n_doubles": 10})
    assert sim.CLASS_KEY not in old.obs
    with pytest.raises(ValueError, match=r"unknown combination classes \['epistatic'\]"):
        sim.simulate(**{**SMALL, "combination_classes": {"epistatic": 2}})


def test_class_subsets_of_the_test_perturbations():
    labels = ["ctrl", "A", "A+B", "A+B", "C+D", "E+F", "G+H"]
    split = ["train", "train", "test", "val", "test", "train", "test"]
    classes = ["control", "single", "synergy", "synergy", "dominant", "synergy", "synergy"]
    assert metrics.class_subsets(labels, split, classes, "ctrl") == {
        "dominant": ["C+D"], "synergy": ["A+B", "G+H"]}  # E+F has no test cells


def _ate(data, labels):
    return metrics.data_ate(data).loc[labels].to_numpy()


@pytest.fixture(scope="module")
def world():
    """A screen with enough cells that each class's character shows above the noise."""
    return sim.simulate(n_programs=2, targets_per_program=4, n_background=2, n_genes=100,
                        cells_per_perturbation=400, n_control=1000,
                        combination_classes={c: 4 for c in sim.COMBINATION_CLASSES})


def test_each_class_means_what_its_name_says(world):
    """Additivity in expression, measured against the data: the singles' summed ATE
    predicts an ``additive_expression`` pair best and a ``dominant`` one worst, and a dominant
    pair's effect is its dominant single's. Seeded data and numpy only; the margins are wide
    (measured: pearson_delta of the summed singles 0.99 / 0.92 / 0.93 / 0.85 / 0.77 for
    additive_expression / additive_latent / synergy / buffering / dominant, seed 0)."""
    info = world.uns["simulation"]
    ate = metrics.data_ate(world)
    by_class = {}
    for lab, c in zip(info["combinations"], info["combination_class"]):
        by_class.setdefault(c, []).append(lab)
    score = {}
    for c, labs in by_class.items():
        summed = np.stack([ate.loc[a].to_numpy() + ate.loc[b].to_numpy()
                           for a, b in (lab.split("+") for lab in labs)])
        score[c] = metrics.METRICS["pearson_delta"](summed, ate.loc[labs].to_numpy(), None)
    print(score)
    assert score["additive_expression"] > 0.95
    assert score["dominant"] < score["additive_latent"] - 0.1
    assert score["dominant"] < score["additive_expression"] - 0.1
    # synergy moves expression further than the sum of its singles, buffering less
    size = {c: np.abs(ate.loc[labs].to_numpy()).mean() for c, labs in by_class.items()}
    for c, labs in by_class.items():
        singles = [np.abs(ate.loc[lab.split("+")].to_numpy().sum(0)).mean() for lab in labs]
        size[c] /= np.mean(singles)
    assert size["synergy"] > 1.2 and size["buffering"] < 0.8
    for lab, dom in zip(info["combinations"], info["dominant"]):
        if dom:
            other = next(p for p in lab.split("+") if p != dom)
            r_dom = np.corrcoef(ate.loc[lab], ate.loc[dom])[0, 1]
            r_other = np.corrcoef(ate.loc[lab], ate.loc[other])[0, 1]
            assert r_dom > 0.9 and r_dom > r_other


def test_metrics_rows_per_class(tmp_path):
    """score_predictions adds one subset per class of the test combinations; an oracle that
    predicts the held-out cells' own means scores 1 on each."""
    data = sim.simulate(**SMALL)
    data_path, split_path = tmp_path / "data.h5ad", tmp_path / "split.tsv"
    contract.write(data, data_path)
    labels = splits.make_split(data.obs["perturbation"].to_numpy(), "ood", seed=0,
                               fraction=0.5, test_fraction=0.5)
    splits.write_split(data.obs_names, labels, split_path)
    pred_path = tmp_path / "pred.h5ad"
    # the oracle knows the held-out truth: the means of the test cells (and all controls)
    heldout = (labels == "test") | (data.obs["perturbation"] == "non-targeting").to_numpy()
    evaluate.write_predictions(metrics.perturbation_means(data[heldout]), pred_path,
                               "non-targeting")
    table = evaluate.score_predictions(pred_path, data_path, split_path)
    test_cls = data.obs.loc[labels == "test", sim.CLASS_KEY].astype(str)
    assert set(test_cls) <= set(sim.COMBINATION_CLASSES)
    assert set(test_cls) <= set(table["subset"])
    assert not {"single", "control"} & set(table["subset"])
    per = table[table["metric"] == "pearson_delta"].set_index("subset")["value"]
    assert np.allclose(per[sorted(set(test_cls))], 1.0)
    # the class subsets partition the test combinations
    members = pd.Series(metrics.class_subsets(data.obs["perturbation"], labels,
                                              data.obs[sim.CLASS_KEY], "non-targeting"))
    assert sorted(sum(members.tolist(), [])) == sorted(
        set(data.obs.loc[labels == "test", "perturbation"]))


def test_class_table_and_figure(tmp_path):
    from samsbench.stages import classes

    rows = [("m", "sams_vae", "s", 0, "pearson_delta", "synergy", 0.5),
            ("m", "sams_vae", "s", 1, "pearson_delta", "synergy", 0.7),
            ("m", "sams_vae", "s", 0, "pearson_delta", "test", 0.9),
            ("m", "sams_vae", "s", 0, "pearson_delta", "train", 0.1),   # not a class: left out
            ("m", "sams_vae", "s", 0, "test_iwelbo", "test", -3.0),    # not a class metric
            ("b", "additive_mean", "s", 0, "ate_r2", "dominant", -0.7)]
    metrics_tsv = tmp_path / "metrics.tsv"
    pd.DataFrame(rows, columns=["model", "family", "split", "seed", "metric", "subset",
                                "value"]).to_csv(metrics_tsv, sep="\t", index=False)
    table = classes.run(metrics_tsv, tmp_path / "c.tsv", tmp_path / "c.png")
    assert list(table.columns) == classes.COLUMNS
    got = {(r.model, r.subset, r.metric): (r.n_seeds, r.mean) for r in table.itertuples()}
    assert got.keys() == {("m", "synergy", "pearson_delta"), ("m", "test", "pearson_delta"),
                          ("b", "dominant", "ate_r2")}
    assert got[("m", "synergy", "pearson_delta")] == (2, pytest.approx(0.6))
    m = table[table["model"] == "m"]
    assert list(m["subset"]) == ["test", "synergy"]  # the whole test set first
    assert (tmp_path / "c.png").stat().st_size > 1000
    empty = classes.class_table(pd.DataFrame(columns=["model", "family", "split", "seed",
                                                      "metric", "subset", "value"]))
    assert empty.empty
