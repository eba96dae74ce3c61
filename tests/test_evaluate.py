"""Tests of samsbench.metrics and the evaluate stage's predictions files: expected numbers are worked out by hand in each test."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from samsbench import metrics as ev
from samsbench.stages import evaluate as stage
from samsbench.data import contract
from samsbench.data.splits import random_split, write_split

CTRL = "non-targeting"


def metric_dict(frame: pd.DataFrame, subset: str = "all") -> dict[str, float]:
    rows = frame[frame["subset"] == subset]
    return dict(zip(rows["metric"], rows["value"]))


def make_adata(X, labels, genes=None, control=CTRL) -> ad.AnnData:
    n, g = X.shape
    obs = pd.DataFrame({"perturbation": list(labels)}, index=[f"cell{i}" for i in range(n)])
    var = pd.DataFrame(index=genes if genes is not None else [f"g{j}" for j in range(g)])
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["control_label"] = control
    return adata


# ---------------------------------------------------------------------------- normalisation


def test_log_cp10k_hand_values_and_zero_cell():
    # Totals are 10,000, so CP10k = counts: log2(1+1) = 1, log2(3+1) = 2, log2(0+1) = 0.
    X = np.array([[1, 3, 9996], [0, 0, 0], [7, 0, 9993]], dtype=float)
    expected = np.array([
        [1.0, 2.0, math.log2(9997)],
        [0.0, 0.0, 0.0],  # zero total -> zeros, not NaN
        [3.0, 0.0, math.log2(9994)],
    ])
    np.testing.assert_allclose(ev.log_cp10k(X), expected, rtol=1e-12)
    out = ev.log_cp10k(sp.csr_matrix(X))
    assert sp.issparse(out)
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-12)
    # Counts scaled to another total give the same CP10k: [1, 1, 2] -> 2500, 2500, 5000.
    np.testing.assert_allclose(
        ev.log_cp10k(np.array([[1.0, 1.0, 2.0]])),
        [[math.log2(2501), math.log2(2501), math.log2(5001)]], rtol=1e-12,
    )
    np.testing.assert_array_equal(X[0], [1, 3, 9996])  # the input is not modified


# ---------------------------------------------------------------------------- data ATE


def test_data_ate_hand_case():
    X = np.array([
        [1, 1, 9998],     # control: log [1, 1, log2 9999]
        [3, 0, 9997],     # control: log [2, 0, log2 9998]
        [7, 3, 9990],     # A:       log [3, 2, log2 9991]
        [14, 6, 19980],   # A, the previous cell x2: the same transform
        [0, 0, 0],        # B: a zero cell -> zeros
    ], dtype=float)
    labels = [CTRL, CTRL, "A", "A", "B"]
    ate = ev.data_ate(make_adata(X, labels))
    ctrl = np.array([1.5, 0.5, (math.log2(9999) + math.log2(9998)) / 2])
    expected = pd.DataFrame(
        [[3 - 1.5, 2 - 0.5, math.log2(9991) - ctrl[2]], list(-ctrl)],
        index=["A", "B"], columns=["g0", "g1", "g2"],
    )
    assert list(ate.index) == ["A", "B"]  # control dropped
    np.testing.assert_allclose(ate.to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert list(ate.columns) == ["g0", "g1", "g2"]


def random_counts(n_cells=200, n_genes=30, n_labels=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(2.0, 1.0, size=(n_cells, n_genes))).astype(float)
    labels = np.array([CTRL] + [f"P{i}" for i in range(1, n_labels)])[
        rng.integers(0, n_labels, n_cells)]
    labels[:5] = CTRL
    return X, labels


def test_data_ate_unchanged_when_a_cell_is_doubled():
    X, labels = random_counts()
    before = ev.data_ate(make_adata(X, labels))
    X2 = X.copy()
    X2[[0, 17, 101]] *= 2  # a control cell and two perturbed cells
    after = ev.data_ate(make_adata(X2, labels))
    np.testing.assert_allclose(after.to_numpy(), before.to_numpy(), atol=1e-12)


def test_data_ate_sparse_equals_dense_any_chunking():
    X, labels = random_counts()
    dense = ev.data_ate(make_adata(X, labels))
    for matrix, chunk in [(sp.csr_matrix(X), 7), (sp.csc_matrix(X), 64), (X, 1), (X, 10_000)]:
        other = ev.data_ate(make_adata(matrix, labels), chunk_rows=chunk)
        np.testing.assert_allclose(other.to_numpy(), dense.to_numpy(), atol=1e-12)
        assert other.index.equals(dense.index) and other.columns.equals(dense.columns)


def test_perturbation_means_against_a_loop():
    X, labels = random_counts(n_cells=50, n_genes=4, n_labels=3)
    X += 1  # no zero-total cell, so the plain formula below needs no guard
    means = ev.perturbation_means(make_adata(X, labels), chunk_rows=8)
    logged = np.log2(X / X.sum(1, keepdims=True) * 1e4 + 1)
    for label in np.unique(labels):
        np.testing.assert_allclose(means.loc[label], logged[labels == label].mean(0), rtol=1e-12)
    # explicit per-cell labels override obs
    other = np.where(labels == CTRL, CTRL, "X")
    means2 = ev.perturbation_means(make_adata(X, labels), labels=other)
    assert list(means2.index) == ["X", CTRL]
    np.testing.assert_allclose(means2.loc["X"], logged[labels != CTRL].mean(0), rtol=1e-12)


# ---------------------------------------------------------------------------- metrics


def frame(values, labels, genes=None):
    values = np.asarray(values, dtype=float)
    return pd.DataFrame(values, index=labels,
                        columns=genes or [f"g{j}" for j in range(values.shape[1])])


def test_pooled_and_per_perturbation_hand_case():
    true = frame([[1, 0, -1], [2, 0, -2]], ["A", "B"])
    pred = frame([[2, 0, -2], [1, 0, -1]], ["A", "B"])
    m = metric_dict(ev.ate_metrics(pred, true, {"all": ["A", "B"]}))
    # Flattened t = [1,0,-1,2,0,-2], p = [2,0,-2,1,0,-1]; both have mean 0.
    # sum tp = 2+2+2+2 = 8, sum t^2 = sum p^2 = 10 -> r = 0.8.
    assert m["ate_pearson"] == pytest.approx(0.8)
    # residuals [-1,0,1,1,0,-1]: SS_res = 4, SS_tot = 10 -> R^2 = 0.6.
    assert m["ate_r2"] == pytest.approx(0.6)
    # Only 3 genes: the top-20 set is every gene, so top-20 metrics equal the pooled ones.
    assert m["ate_pearson_top20"] == pytest.approx(0.8)
    assert m["ate_r2_top20"] == pytest.approx(0.6)
    # Each predicted row is a positive multiple of its true row -> per-row r = 1.
    assert m["pearson_delta"] == pytest.approx(1.0)
    assert m["pearson_delta_top20"] == pytest.approx(1.0)
    assert m["effect_rmse"] == pytest.approx(math.sqrt(4 / 6))
    assert m["direction_agreement_top20"] == pytest.approx(1.0)
    # pred A equals true B exactly (distance 0 < sqrt 2) and vice versa: rank 1/1 for both.
    assert m["discrimination_rank"] == pytest.approx(1.0)


def test_top20_selects_largest_absolute_data_effects():
    # 22 genes; genes 0 and 1 have the two smallest |true ATE| and are left out of the top 20.
    a = np.array([0.1, -0.1] + [(-1) ** j * j for j in range(2, 22)], dtype=float)
    true = frame([a, 2 * a], ["A", "B"])
    pred_a = a.copy()
    pred_a[0], pred_a[1] = -5.0, 5.0  # wrong only outside the top 20, and with the wrong sign
    pred = frame([pred_a, 2 * a], ["A", "B"])
    m = metric_dict(ev.ate_metrics(pred, true, {"all": ["A", "B"]}))
    for name in ["ate_pearson_top20", "ate_r2_top20", "pearson_delta_top20",
                 "direction_agreement_top20"]:
        assert m[name] == pytest.approx(1.0), name
    assert m["ate_pearson"] < 1.0 and m["ate_r2"] < 1.0
    # Squared errors 5.1^2 twice, over 2 x 22 entries.
    assert m["effect_rmse"] == pytest.approx(math.sqrt(2 * 5.1 ** 2 / 44))
    # pred A is 7.2 from true A but about 57 from true B; pred B is true B: rank 0.
    assert m["discrimination_rank"] == 0.0


def test_direction_agreement_and_constant_rows():
    true = frame([[1, 0, -1], [2, 0, -2], [1, 1, 1]], ["A", "B", "C"])
    pred = frame([[1, 0, -1], [-1, 0, -1], [3, 3, 3]], ["A", "B", "C"])
    m = metric_dict(ev.ate_metrics(pred, true, {"all": ["A", "B", "C"], "only_c": ["C"]}))
    # Sign matches: A 3/3; B [+,0,-] vs [-,0,-] 2/3; C 3/3 -> mean 8/9.
    assert m["direction_agreement_top20"] == pytest.approx(8 / 9)
    # Per-row r: A = 1; B: t = [2,0,-2], p = [-1,0,-1] -> centred p = [-1/3, 2/3, -1/3],
    # sum tp = -2/3 + 2/3 = 0 -> r = 0; C is constant -> dropped. Mean (1 + 0) / 2.
    assert m["pearson_delta"] == pytest.approx(0.5)
    c = metric_dict(ev.ate_metrics(pred, true, {"only_c": ["C"]}), "only_c")
    # C alone: constant vectors (no Pearson of any kind), one perturbation (no rank).
    assert set(c) == {"ate_r2", "ate_r2_top20", "effect_rmse", "direction_agreement_top20"}
    # sklearn convention for constant truth: imperfect -> 0.0.
    assert c["ate_r2"] == 0.0
    assert c["effect_rmse"] == pytest.approx(2.0)


def test_discrimination_rank_hand_case():
    true = frame([[0, 0], [1, 0], [3, 0]], ["A", "B", "C"])
    pred = frame([[0.9, 0], [1, 0], [1.9, 0]], ["A", "B", "C"])
    # pred A: dist A 0.9, B 0.1, C 2.1 -> 1 closer of 2 -> 1/2.
    # pred B: exact -> 0.  pred C: dist C 1.1, B 0.9, A 1.9 -> 1/2.   Mean 1/3.
    assert ev.discrimination_rank(pred.to_numpy(), true.to_numpy()) == pytest.approx(1 / 3)
    m = metric_dict(ev.ate_metrics(pred, true, {"all": ["A", "B", "C"]}))
    assert m["discrimination_rank"] == pytest.approx(1 / 3)


def test_perfect_prediction():
    rng = np.random.default_rng(1)
    true = frame(rng.normal(size=(15, 40)), [f"P{i}" for i in range(15)])
    m = metric_dict(ev.ate_metrics(true.copy(), true, {"all": list(true.index)}))
    assert set(m) == set(ev.METRICS)
    for name in ["ate_pearson", "ate_r2", "ate_pearson_top20", "ate_r2_top20",
                 "pearson_delta", "pearson_delta_top20", "direction_agreement_top20"]:
        assert m[name] == pytest.approx(1.0), name
    assert m["effect_rmse"] == 0.0
    assert m["discrimination_rank"] == 0.0


def test_shuffled_labels_give_chance_discrimination():
    rng = np.random.default_rng(2)
    labels = [f"P{i}" for i in range(300)]
    true = frame(rng.normal(size=(300, 50)), labels)
    ranks = []
    for _ in range(4):
        shuffled = true.iloc[rng.permutation(300)].copy()
        shuffled.index = labels  # every prediction now belongs to another perturbation
        ranks.append(metric_dict(ev.ate_metrics(shuffled, true, {"all": labels}))[
            "discrimination_rank"])
    assert np.mean(ranks) == pytest.approx(0.5, abs=0.04)


def test_pearson_and_r2_agree_with_scipy_and_sklearn():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(12, 60))
    p = 0.5 * t + rng.normal(size=t.shape)
    labels = [f"P{i}" for i in range(12)]
    m = metric_dict(ev.ate_metrics(frame(p, labels), frame(t, labels), {"all": labels}))
    assert m["ate_pearson"] == pytest.approx(pearsonr(p.ravel(), t.ravel())[0], abs=1e-12)
    assert m["ate_r2"] == pytest.approx(r2_score(t.ravel(), p.ravel()), abs=1e-12)
    per_row = [pearsonr(p[i], t[i])[0] for i in range(12)]
    assert m["pearson_delta"] == pytest.approx(np.mean(per_row), abs=1e-12)
    # top-20 as the reference: argpartition on |data ATE| per perturbation
    top = np.argpartition(-np.abs(t), 20, axis=1)[:, :20]
    pt, tt = np.take_along_axis(p, top, 1), np.take_along_axis(t, top, 1)
    assert m["ate_pearson_top20"] == pytest.approx(pearsonr(pt.ravel(), tt.ravel())[0], abs=1e-12)
    assert m["ate_r2_top20"] == pytest.approx(r2_score(tt.ravel(), pt.ravel()), abs=1e-12)
    assert m["pearson_delta_top20"] == pytest.approx(
        np.mean([pearsonr(pt[i], tt[i])[0] for i in range(12)]), abs=1e-12)


def test_alignment_subsets_and_row_order():
    true = frame([[1, 0, -1], [2, 0, -2], [0, 1, 2]], ["A", "B", "C"])
    # pred lacks C, has an extra gene and its genes in another order
    pred = pd.DataFrame([[9, -2, 0, 2], [9, -1, 0, 1]], index=["B", "A"],
                        columns=["extra", "g2", "g1", "g0"], dtype=float)
    out = ev.ate_metrics(pred, true, {"test": ["B"], "all": ["A", "B", "C"], "val": ["C"],
                                      "train": []})
    assert list(out.columns) == ["metric", "subset", "value"]
    # all before test (canonical order); empty val (C has no prediction) and train skipped
    assert list(pd.unique(out["subset"])) == ["all", "test"]
    assert list(out.loc[out.subset == "all", "metric"]) == list(ev.METRICS)
    assert metric_dict(out)["effect_rmse"] == 0.0  # aligned on labels and genes
    assert "discrimination_rank" not in metric_dict(out, "test")  # one perturbation
    assert not out["value"].isna().any()


def test_subsets_from_split():
    labels = [CTRL, "A", "A", "B", "C", CTRL]
    split = ["train", "train", "test", "val", "unused", "test"]
    assert ev.subsets_from_split(labels, split, CTRL) == {
        "all": ["A", "B", "C"], "train": ["A"], "val": ["B"], "test": ["A"]}


# ---------------------------------------------------------------------------- predictions


@pytest.fixture
def small_data():
    X, labels = random_counts(n_cells=80, n_genes=6, n_labels=4, seed=5)
    return make_adata(X.astype(np.int64), labels)


def test_predictions_roundtrip(tmp_path, small_data):
    means = ev.perturbation_means(small_data)
    path = tmp_path / "pred.h5ad"
    stage.write_predictions(means, path, CTRL, {"model": "x", "seed": 1, "missing": None})
    stored = ad.read_h5ad(path)
    assert list(stored.obs["perturbation"]) == list(means.index)
    assert stored.uns["control_label"] == CTRL and stored.uns["metadata"]["model"] == "x"
    pred_ate = stage.read_predictions(path, small_data)
    pd.testing.assert_frame_equal(pred_ate, ev.data_ate(small_data), check_names=False)
    assert not list(tmp_path.glob("*.tmp-*"))  # the temporary file is gone


def write_raw(path, values, labels, genes, control=CTRL):
    pred = ad.AnnData(X=np.asarray(values, dtype=float),
                      obs=pd.DataFrame({"perturbation": labels}, index=labels),
                      var=pd.DataFrame(index=genes))
    if control is not None:
        pred.uns["control_label"] = control
    pred.write_h5ad(path)
    return path


def test_gene_order_is_aligned(tmp_path, small_data):
    means = ev.perturbation_means(small_data)
    reordered = means[means.columns[::-1]]
    path = write_raw(tmp_path / "p.h5ad", reordered.to_numpy(), list(reordered.index),
                     list(reordered.columns), control=None)  # control from the data
    pd.testing.assert_frame_equal(stage.read_predictions(path, small_data),
                                  ev.data_ate(small_data), check_names=False)


@pytest.mark.parametrize("case, message", [
    ("missing_control", "missing the control row 'non-targeting'"),
    ("unknown", "not in the data: ['NOPE']"),
    ("missing_gene", "genes of the data are missing: ['g5']"),
    ("extra_gene", "genes are not in the data: ['EXTRA']"),
    ("nan", "NaN or infinite values, first at perturbation 'P1', gene 'g2'"),
    ("inf", "NaN or infinite"),
    ("duplicate", "duplicated: ['P1']"),
    ("control_label", "data's control is 'non-targeting'"),
])
def test_bad_prediction_files(tmp_path, small_data, case, message):
    means = ev.perturbation_means(small_data)
    values, labels, genes = means.to_numpy().copy(), list(means.index), list(means.columns)
    control = CTRL
    if case == "missing_control":
        keep = [i for i, lab in enumerate(labels) if lab != CTRL]
        values, labels = values[keep], [labels[i] for i in keep]
    elif case == "unknown":
        labels[0] = "NOPE"
    elif case == "missing_gene":
        values, genes = values[:, :5], genes[:5]
    elif case == "extra_gene":
        values, genes = np.hstack([values, values[:, :1]]), genes + ["EXTRA"]
    elif case in ("nan", "inf"):
        values[labels.index("P1"), 2] = np.nan if case == "nan" else np.inf
    elif case == "duplicate":
        labels[labels.index("P2")] = "P1"
    elif case == "control_label":
        control = "ctrl"
    path = tmp_path / f"{case}.h5ad"
    pred = ad.AnnData(X=values, obs=pd.DataFrame({"perturbation": labels},
                                                 index=[f"r{i}" for i in range(len(labels))]),
                      var=pd.DataFrame(index=genes))
    pred.uns["control_label"] = control
    pred.write_h5ad(path)
    with pytest.raises(stage.PredictionsError) as err:
        stage.read_predictions(path, small_data)
    assert message in str(err.value) and str(path) in str(err.value)


def test_unreadable_and_unlabelled_files(tmp_path, small_data):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    with pytest.raises(stage.PredictionsError, match="not a readable h5ad"):
        stage.read_predictions(bad, small_data)
    with pytest.raises(stage.PredictionsError, match="no such predictions file"):
        stage.read_predictions(tmp_path / "absent.h5ad", small_data)
    plain = tmp_path / "plain.h5ad"
    ad.AnnData(X=np.zeros((2, 6)), var=pd.DataFrame(index=list(small_data.var_names))
               ).write_h5ad(plain)
    with pytest.raises(stage.PredictionsError, match='obs has no "perturbation" column'):
        stage.read_predictions(plain, small_data)


def test_write_predictions_refuses_bad_input(tmp_path):
    means = frame([[0.0, 1.0], [1.0, np.nan]], [CTRL, "A"])
    with pytest.raises(stage.PredictionsError, match="NaN"):
        stage.write_predictions(means, tmp_path / "p.h5ad", CTRL, {})
    with pytest.raises(stage.PredictionsError, match="no row for the control"):
        stage.write_predictions(means.fillna(0), tmp_path / "p.h5ad", "ctrl", {})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- score and CLI


def test_score_and_cli(tmp_path, small_data, capsys):
    data_path, split_path = tmp_path / "data.h5ad", tmp_path / "split.tsv"
    contract.write(small_data, data_path)
    write_split(small_data.obs_names, random_split(small_data.n_obs, seed=0), split_path)
    pred_path = tmp_path / "pred.h5ad"
    stage.write_predictions(ev.perturbation_means(small_data), pred_path, CTRL, {"model": "oracle"})

    result = stage.score_predictions(pred_path, data_path, split_path)
    assert set(result["subset"]) == {"all", "train", "val", "test"}
    m = metric_dict(result)
    assert m["ate_pearson"] == pytest.approx(1.0) and m["discrimination_rank"] == 0.0

    from samsbench import cli

    out = tmp_path / "out" / "metrics.tsv"
    argv = ["score", "--predictions", str(pred_path), "--data", str(data_path), "--splits",
            str(split_path), "--name", "oracle", "--out", str(out)]
    assert cli.main(argv) == 0
    written = pd.read_csv(out, sep="\t")
    assert set(written["model"]) == {"oracle"}
    pd.testing.assert_frame_equal(written[["metric", "subset", "value"]], result,
                                  check_dtype=False, rtol=1e-9)

    argv[2] = str(tmp_path / "absent.h5ad")
    assert cli.main(argv) == 2
    assert "no such predictions file" in capsys.readouterr().err


# ------------------------------------------------------- depth-matched model ATE (issue 25.4)


class _Poisson:
    """A fixed generative model: each label's cells are Poisson counts with fixed gene shares
    times the library size (what inference's sampler calls, nothing more)."""

    has_likelihood = True

    def __init__(self, shares):
        import torch

        self.shares = torch.as_tensor(shares, dtype=torch.float64)
        self.decoder = self

    def sample_globals(self, n):
        return None, None

    def cell_context(self, block, g):
        return block

    def local_prior(self, ctx):
        import torch

        return torch.distributions.Normal(torch.zeros(len(ctx), 1, dtype=torch.float64), 1.0)

    def decoder_input(self, u, ctx):
        return self.shares[ctx].expand(u.shape[0], -1, -1)

    def sample(self, h, lib):
        import torch

        return torch.poisson(h * lib[..., None])


def test_depth_matched_ate_matches_cells_at_their_depth_and_the_paper_does_not():
    from types import SimpleNamespace

    import torch

    from samsbench import inference
    from samsbench.nn import log2_cp10k

    # control and a perturbation that halves gene 1; cells have ~126 counts, as in a screen
    shares = np.array([[0.97, 0.02, 0.01], [0.985, 0.01, 0.005]])
    data = SimpleNamespace(
        X=torch.zeros(1, 3), dosage_for_labels=lambda labels: SimpleNamespace(
            codes=torch.arange(len(labels))), dosage=lambda codes: codes)
    model = _Poisson(shares)
    torch.manual_seed(1)
    cells = [log2_cp10k(torch.poisson(torch.as_tensor(s).expand(50000, -1) * 126.0))
             for s in shares]
    truth = (cells[1].mean(0) - cells[0].mean(0)).numpy()
    matched, paper = inference.predicted_means_matched(
        model, data, ["ctrl", "P"], [np.full(50, 126.0)] * 2, n_particles=50000, chunk=10000)
    assert np.abs((matched[1] - matched[0]) - truth).max() < 0.08  # Monte Carlo error
    assert np.abs((paper[1] - paper[0]) - truth).max() > 0.3  # 1e4 counts: another quantity
    plain = inference.predicted_means(model, data, ["ctrl", "P"], n_particles=50000, chunk=10000)
    np.testing.assert_array_equal(paper, plain)  # the paper's draws are predicted_means'


def test_prepare_warns_once_about_all_zero_genes(tmp_path, caplog):
    import logging

    import scipy.sparse as sp

    from samsbench.data import contract
    from samsbench.stages import data as data_stage

    X = np.array([[1, 0, 0, 3], [2, 0, 0, 1], [0, 0, 0, 4]], dtype=np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(
        {"perturbation": ["ctrl", "A", "A"]}, index=["a", "b", "c"]),
        var=pd.DataFrame(index=["g0", "g1", "g2", "g3"]))
    adata.uns["control_label"] = "ctrl"
    contract.write(adata, str(tmp_path / "d.h5ad"))
    with caplog.at_level(logging.WARNING):
        assert data_stage.warn_all_zero_genes(str(tmp_path / "d.h5ad")) == 2
    warnings = [r.getMessage() for r in caplog.records if "no count in any cell" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 4 genes" in warnings[0]
