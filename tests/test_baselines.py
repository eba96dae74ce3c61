"""The issue-13 baselines (train_mean, linear, replicate) on hand-computed cases, and the
replicate ceiling scored against the other half of the cells only."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from samsbench import metrics
from samsbench.data import contract
from samsbench.stages import evaluate
from samsbench.stages import train as train_stage
from samsbench.models import build
from samsbench.models.linear import LinearModel
from samsbench.models.replicate import Replicate, split_halves
from samsbench.models.train_mean import TrainMean


class FakeData:
    """What a MeanEffectModel reads: the control label and mean log expression per label."""

    control = "non-targeting"

    def __init__(self, means):
        self.means = {k: np.asarray(v, dtype=float) for k, v in means.items()}

    def label_means(self, name):
        assert name == "train"
        return self.means


def test_train_mean_hand_case():
    data = FakeData({"non-targeting": [1.0, 2.0, 0.0], "A": [2.0, 2.0, 0.0],
                     "B": [1.0, 5.0, 1.0], "A+B": [4.0, 2.0, 2.0]})
    model = TrainMean(3, [])
    model.fit(data)
    # effects (1,0,0), (0,3,1), (3,0,2): their mean (4/3, 1, 1), each label counted once
    expected = np.array([1.0 + 4 / 3, 3.0, 1.0])
    out = model.predict_means(["A", "UNSEEN", "C+D", "non-targeting"])
    np.testing.assert_allclose(out[:3], np.tile(expected, (3, 1)))
    np.testing.assert_allclose(out[3], [1.0, 2.0, 0.0])
    again = TrainMean(3, [])
    again.load_state_dict(model.state_dict())  # the round trip through model.pt
    np.testing.assert_allclose(again.predict_means(["A", "non-targeting"]), out[[0, 3]])


def test_train_mean_needs_control_and_perturbations():
    with pytest.raises(ValueError, match="control cells"):
        TrainMean(3, []).fit(FakeData({"A": [1.0]}))
    with pytest.raises(ValueError, match="at least one perturbation"):
        TrainMean(3, []).fit(FakeData({"non-targeting": [1.0]}))


def _linear_case(seed=0, n_singles=6, n_genes=8):
    rng = np.random.default_rng(seed)
    control = rng.normal(2, 0.5, n_genes)
    singles = [f"G{i}" for i in range(n_singles)]
    means = {"non-targeting": control}
    for s in singles:
        means[s] = control + rng.normal(0, 1, n_genes)
    means["G0+G1"] = control + rng.normal(0, 1, n_genes)  # a training combination: ignored
    return FakeData(means), singles, control


def test_linear_equals_a_direct_numpy_ridge():
    data, singles, control = _linear_case()
    k, lam = 3, 0.7
    model = LinearModel(8, [], {"linear_pca_dim": k, "linear_ridge_penalty": lam})
    model.fit(data)

    # Ahlmann-Eltze et al.: Y (genes x perts) ≈ G W Pᵀ + b, written out with numpy directly
    Y = np.stack([data.means[s] - control for s in singles], axis=1)  # genes x perts
    b = Y.mean(axis=1, keepdims=True)
    U, S, Vt = np.linalg.svd((Y - b).T, full_matrices=False)  # perts x genes
    G, P = Vt[:k].T, U[:, :k] * S[:k]
    W = (np.linalg.inv(G.T @ G + lam * np.eye(k)) @ G.T @ (Y - b) @ P
         @ np.linalg.inv(P.T @ P + lam * np.eye(k)))
    fitted = G @ W @ P.T + b  # genes x perts
    out = model.predict_means(singles + ["G2+G4", "NEW", "NEW+G3", "non-targeting"])
    np.testing.assert_allclose(out[: len(singles)], (control[:, None] + fitted).T, atol=1e-10)
    combo = control + b[:, 0] + G @ W @ (P[2] + P[4])  # additive in the embedding
    np.testing.assert_allclose(out[len(singles)], combo, atol=1e-10)
    np.testing.assert_allclose(out[len(singles) + 1], control + b[:, 0], atol=1e-10)
    np.testing.assert_allclose(out[len(singles) + 2],
                               control + b[:, 0] + G @ W @ P[3], atol=1e-10)
    np.testing.assert_allclose(out[-1], control)


def test_linear_full_rank_without_penalty_reproduces_singles_and_adds_combinations():
    data, singles, control = _linear_case(n_singles=4)
    model = LinearModel(8, [], {"linear_pca_dim": 10, "linear_ridge_penalty": 0.0})
    model.fit(data)
    out = model.predict_means(singles + ["G1+G3"])
    effects = np.stack([data.means[s] - control for s in singles])
    np.testing.assert_allclose(out[:4], control + effects, atol=1e-9)
    # rank-complete: combination = b + (e1 - b) + (e3 - b) = e1 + e3 - mean effect
    np.testing.assert_allclose(out[4], control + effects[1] + effects[3] - effects.mean(0),
                               atol=1e-9)


def test_linear_defaults_are_the_published_ones_and_bad_values_fail():
    model = LinearModel(8, [], {})
    assert (model.pca_dim, model.ridge) == (10, 0.1)
    with pytest.raises(ValueError, match="linear_pca_dim"):
        LinearModel(8, [], {"linear_pca_dim": 0})
    with pytest.raises(ValueError, match="linear_ridge_penalty"):
        LinearModel(8, [], {"linear_ridge_penalty": -1})


# ------------------------------------------------------------------------------ replicate


def _counts_dataset(path, seed=0):
    """Controls and two perturbations with distinct counts per cell, written as a contract."""
    rng = np.random.default_rng(seed)
    labels = ["non-targeting"] * 10 + ["A"] * 7 + ["B"] * 6 + ["A+B"] * 5
    X = rng.poisson(rng.uniform(1, 30, size=(len(labels), 12))).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(12)]))
    adata.uns["control_label"] = "non-targeting"
    contract.write(adata, str(path))
    return adata


def test_split_halves_is_per_label_fixed_and_order_free():
    labels = np.array(["a"] * 25 + ["b"] * 24 + ["c"])
    half = split_halves(labels, seed=3)
    assert [int(half[labels == x].sum()) for x in "abc"] == [12, 12, 0]
    np.testing.assert_array_equal(half, split_halves(labels, seed=3))
    assert not np.array_equal(half, split_halves(labels, seed=4))


def test_split_halves_is_per_stratum():
    labels = np.array(["a"] * 10)
    strata = np.array(["train"] * 4 + ["test"] * 6)
    half = split_halves(labels, [0, 1], strata)
    assert (int(half[:4].sum()), int(half[4:].sum())) == (2, 3)


def _train_replicate(tmp_path, seed, name="run"):
    run = tmp_path / name
    train_stage.train(str(tmp_path / "data.h5ad"), str(tmp_path / "split.tsv"),
                      {"family": "replicate", "replicate_seed": 1}, {}, str(run), seed,
                      progress=False)
    evaluate.predict(str(tmp_path / "data.h5ad"), str(tmp_path / "split.tsv"),
                     str(run / "model.pt"), str(run / "predictions.h5ad"))
    return run


def test_replicate_scores_half_a_against_half_b_of_the_held_out_cells(tmp_path):
    adata = _counts_dataset(tmp_path / "data.h5ad")
    split = np.array(["train"] * 17 + ["test"] * 11)
    pd.DataFrame({"cell_id": adata.obs_names, "split": split}).to_csv(
        tmp_path / "split.tsv", sep="\t", index=False)
    run = _train_replicate(tmp_path, seed=0)
    scored = evaluate.score_predictions(run / "predictions.h5ad", tmp_path / "data.h5ad",
                                        tmp_path / "split.tsv").set_index(["metric", "subset"])["value"]

    # By hand: the test cells of each perturbation halved (seed: replicate_seed 1, run seed 0),
    # each half's mean log2(CP10k+1) minus the mean of that half of ALL control cells.
    labels = adata.obs["perturbation"].to_numpy()
    y = metrics.log_cp10k(adata.X.toarray())
    half = split_halves(labels, [1, 0], split)

    def ate(rows):
        control = y[rows & (labels == "non-targeting")].mean(0)
        return np.stack([y[rows & (labels == p) & (split == "test")].mean(0) - control
                         for p in ("A+B", "B")])

    a, b = ate(half), ate(~half)
    r = np.array([np.corrcoef(a[i], b[i])[0, 1] for i in range(2)])
    assert scored["split_half_pearson_delta", "test"] == pytest.approx(r.mean(), abs=1e-9)
    # the ceiling: Spearman-Brown on each perturbation's split-half r, square-rooted
    bound = np.sqrt(np.clip(2 * r / (1 + r), 0, 1))
    assert scored["pearson_delta", "test"] == pytest.approx(bound.mean(), abs=1e-9)
    rmse = np.sqrt(np.mean((a - b) ** 2) / 4)
    assert scored["effect_rmse", "test"] == pytest.approx(rmse, abs=1e-9)
    assert ("centroid_accuracy", "test") not in scored  # no ceiling defined for it
    # the record is in the file: half B of every label, the controls' included
    recorded = ad.read_h5ad(run / "predictions.h5ad").uns["truth_cells"]
    assert sorted(recorded) == sorted(adata.obs_names[~half])


def test_replicate_halving_follows_the_run_seed(tmp_path):
    adata = _counts_dataset(tmp_path / "data.h5ad")
    pd.DataFrame({"cell_id": adata.obs_names, "split": ["train"] * 17 + ["test"] * 11}).to_csv(
        tmp_path / "split.tsv", sep="\t", index=False)
    cells = [sorted(ad.read_h5ad(_train_replicate(tmp_path, seed, f"s{seed}")
                                 / "predictions.h5ad").uns["truth_cells"]) for seed in (0, 1, 0)]
    assert cells[0] != cells[1]  # another seed, another halving (its sd is the ceiling's noise)
    assert cells[0] == cells[2]


def test_truth_cells_unknown_to_the_data_fail(tmp_path):
    adata = _counts_dataset(tmp_path / "data.h5ad")
    means = pd.DataFrame(np.zeros((2, 12)), index=["non-targeting", "A"],
                         columns=adata.var_names)
    evaluate.write_predictions(means, tmp_path / "p.h5ad", "non-targeting",
                               truth_cells=["c0", "nope"])
    with pytest.raises(evaluate.PredictionsError, match="not in the data: \\['nope'\\]"):
        evaluate.truth_cells(tmp_path / "p.h5ad", adata)


def test_new_baselines_are_registered():
    for family, cls in (("train_mean", TrainMean), ("linear", LinearModel),
                        ("replicate", Replicate)):
        assert isinstance(build(family, 3, ["A"], {}), cls)


def test_baseline_hyperparameters_are_typed_and_scoped_to_their_family():
    from samsbench.models import HyperparameterError, declared, hyperparameters

    assert hyperparameters("linear", {"linear_pca_dim": 4.0}).linear_pca_dim == 4
    assert hyperparameters("replicate", {}).replicate_seed == 0
    assert "linear_pca_dim" not in declared("train_mean")
    with pytest.raises(HyperparameterError, match="linear: unknown hyperparameter 'linear_pca'"):
        build("linear", 3, ["A"], {"linear_pca": 4})
    with pytest.raises(HyperparameterError, match="replicate_seed' must be int"):
        build("replicate", 3, ["A"], {"replicate_seed": "one"})
    with pytest.raises(HyperparameterError, match="train_mean: unknown hyperparameter"):
        build("train_mean", 3, ["A"], {"replicate_seed": 1})


def test_one_label_mean_in_float64_for_baselines_replicate_and_scorer(tmp_path):
    # TensorData.label_means (the baselines, the replicate) equals the scorer's
    # metrics.perturbation_means, both float64
    adata = _counts_dataset(tmp_path / "data.h5ad")
    pd.DataFrame({"cell_id": adata.obs_names, "split": ["train"] * 28}).to_csv(
        tmp_path / "split.tsv", sep="\t", index=False)
    data = train_stage.load_data(str(tmp_path / "data.h5ad"), str(tmp_path / "split.tsv"))
    scorer = metrics.perturbation_means(adata)
    for means in (data.label_means("train"), data.label_means(rows=np.arange(28))):
        assert set(means) == set(scorer.index)
        for label, row in means.items():
            assert row.dtype == np.float64
            np.testing.assert_allclose(row, scorer.loc[label].to_numpy(), rtol=0, atol=1e-12)
