"""Planted truth on the reference's own simulator: the dataset, the contract's continuous mode,
and mask recovery under both matching conventions (hand-computed)."""

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from samsbench.data import contract, splits
from samsbench.data.contract import ContractError
from samsbench.data.reference_sim import simulate_reference
from samsbench.enrichment.recovery import mask_stats
from samsbench.stages import data as data_stage
from samsbench.stages import evaluate
from samsbench.stages import train as train_stage

TINY = dict(n_train=20, n_val=5, n_test=5, K=4, T=6, G=12, seed=3)


# -- matching conventions -------------------------------------------------------------------

# True dims: d0 on rows 0-1, d1 on rows 2-3. Learned column 0 carries d0 but below the
# threshold (0.45); column 1 has one active entry, on a d0 row.
TRUE = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
Q = np.array([[0.45, 0.6], [0.45, 0.0], [0.0, 0.1], [0.0, 0.1]])


def test_reference_convention_matches_on_the_thresholded_mask():
    # hard co-occurrence: d0.c1 = 1, all else 0 -> d0 <-> c1, d1 <-> c0
    stats = mask_stats(TRUE, Q, matching="mask")
    assert stats["assignment"] == [1, 0]
    # the one active entry (row 0, c1) is a true d0 entry: tp 1 of 1 predicted, 4 true
    assert stats["precision"] == 1.0
    assert stats["recall"] == 0.25
    assert stats["f1"] == pytest.approx(2 * 1 / (1 + 4))
    # positives (0.6, 0, 0, 0) against negatives (0.45, 0.45, 0.1, 0.1): 4 of 16 pairs
    assert stats["auroc"] == pytest.approx(4 / 16)
    assert stats["density"] == pytest.approx(1 / 8)


def test_our_convention_matches_on_probabilities_and_differs():
    # probability co-occurrence: identity 0.9 + 0.2 = 1.1 beats the swap 0.6 + 0
    stats = mask_stats(TRUE, Q, matching="probability")
    assert stats["assignment"] == [0, 1]
    # the active entry (row 0, c1) now sits on d1, where row 0 is off: no true positive
    assert (stats["precision"], stats["recall"], stats["f1"]) == (0.0, 0.0, 0.0)
    # positives (0.45, 0.45, 0.1, 0.1) against negatives (0.6, 0, 0, 0): 3+3+3+3 of 16
    assert stats["auroc"] == pytest.approx(12 / 16)
    assert mask_stats(TRUE, Q)["assignment"] == [0, 1]  # the default is ours


def test_conventions_agree_on_a_confident_mask():
    q = np.array([[0.1, 0.9], [0.05, 0.8], [0.95, 0.2], [0.7, 0.4]])
    a, b = mask_stats(TRUE, q, matching="mask"), mask_stats(TRUE, q, matching="probability")
    assert a == b
    assert a["assignment"] == [1, 0]
    assert a["f1"] == 1.0 and a["auroc"] == 1.0


def test_mask_stats_bad_input():
    with pytest.raises(ValueError, match="matching must be one of"):
        mask_stats(TRUE, Q, matching="hard")
    with pytest.raises(ValueError, match="same perturbations"):
        mask_stats(TRUE, Q[:3])
    with pytest.raises(ValueError, match="NaN"):
        mask_stats(TRUE, np.where(Q > 0.5, np.nan, Q))


# -- the generator and the contract's continuous mode -----------------------------------------

def test_generator_plants_the_reference_design():
    adata, split, mask, effects = simulate_reference(n_train=30, n_val=5, n_test=5, seed=1)
    assert adata.shape == (100 * 40, 100)
    assert adata.uns["value_kind"] == "continuous" and adata.uns["no_controls"]
    assert not contract.has_controls(adata)
    assert np.array_equal(adata.uns["simulation"]["true_mask"], mask)
    # effects are ±N(5, 0.5) exactly where the mask is on
    on = mask > 0
    assert np.all(effects[~on] == 0)
    assert abs(np.abs(effects[on]).mean() - 5) < 0.1
    assert 0.09 < on.mean() < 0.18  # Bernoulli(2/15) over 1,500 entries
    # genes have unit variance before noise, which carries 20 %: total variance 1 / 0.8
    assert np.var(adata.X, axis=0, ddof=1).mean() == pytest.approx(1.25, abs=0.02)
    # the reference's row blocks: replicate i of every perturbation, i < n_train, is train
    assert list(split[:100]) == ["train"] * 100 and list(split[-100:]) == ["test"] * 100
    assert np.array_equal(simulate_reference(n_train=30, n_val=5, n_test=5, seed=1)[0].X,
                          adata.X)


def test_continuous_mode_and_no_controls_are_declared_not_guessed():
    adata = simulate_reference(**TINY)[0]
    contract.validate(adata)  # negative, non-integer, no controls: all declared
    undeclared = adata.copy()
    del undeclared.uns["value_kind"]
    with pytest.raises(ContractError, match="negative"):
        contract.validate(undeclared)
    controls = adata.copy()
    del controls.uns["no_controls"]
    with pytest.raises(ContractError, match="no control cells"):
        contract.validate(controls)
    broken = adata.copy()
    broken.X[0, 0] = np.inf
    with pytest.raises(ContractError, match="finite"):
        contract.validate(broken)
    unknown = adata.copy()
    unknown.uns["value_kind"] = "logcounts"
    with pytest.raises(ContractError, match="value_kind"):
        contract.validate(unknown)


def test_only_normal_likelihood_models_fit_continuous_data():
    ok = {"likelihood": "normal", "encoder_input_normalization": "standardize"}
    contract.require_model_fits("continuous", "sams_vae", ok)
    contract.require_model_fits("counts", "sams_vae", {"likelihood": "library_nb"})
    with pytest.raises(ContractError, match="likelihood 'library_nb'"):
        contract.require_model_fits("continuous", "sams_vae", {**ok, "likelihood": "library_nb"})
    with pytest.raises(ContractError, match="likelihood None"):  # a baseline has none
        contract.require_model_fits("continuous", "additive_mean", {})
    with pytest.raises(ContractError, match="log_standardize"):
        contract.require_model_fits("continuous", "sams_vae",
                                    {**ok, "encoder_input_normalization": "log_standardize"})


def _prepared(tmp_path):
    data_path = str(tmp_path / "prepared.h5ad")
    data_stage.prepare({"source": "reference_sim", "simulate": TINY}, [], data_path)
    adata = contract.read(data_path)
    split_path = str(tmp_path / "split.tsv")
    splits.write_split(adata.obs_names, splits.random_split(adata.n_obs, 0), split_path)
    return data_path, split_path, adata


def test_prepare_dispatch_writes_a_continuous_contract_file(tmp_path):
    _, _, adata = _prepared(tmp_path)
    assert contract.value_kind(adata) == "continuous"
    assert adata.n_obs == 6 * 30 and not contract.has_controls(adata)
    assert adata.uns["simulation"]["true_mask"].shape == (6, 4)


def test_training_refuses_a_count_likelihood_on_continuous_data(tmp_path):
    data_path, split_path, _ = _prepared(tmp_path)
    hp = {"family": "sams_vae", "n_latent": 4, "likelihood": "library_nb",
          "encoder_input_normalization": "log_standardize", "mask_prior_prob": 0.1}
    with pytest.raises(ContractError, match="continuous"):
        train_stage.train(data_path, split_path, hp, {"max_steps": 5}, str(tmp_path / "run"),
                          0, progress=False)
    assert not os.path.exists(tmp_path / "run" / "model.pt")


# -- the workflow's table --------------------------------------------------------------------

def _latents(path, names, q=None):
    obs = pd.DataFrame(index=pd.Index(names, name="perturbation"))
    adata = ad.AnnData(X=np.zeros((len(names), 2), np.float32), obs=obs)
    if q is not None:
        adata.layers["mask_prob"] = q.astype(np.float32)
    adata.write_h5ad(path)
    return path


def test_mask_recovery_table_reads_rows_by_name_and_skips_unmasked_runs(tmp_path):
    data = ad.AnnData(X=np.zeros((1, 1), np.float32))
    data.uns["simulation"] = {"perturbations": np.array(["P0", "P1", "P2", "P3"], dtype=object),
                              "true_mask": TRUE.astype(float)}
    data_path = str(tmp_path / "data.h5ad")
    data.write_h5ad(data_path)
    order = [3, 0, 2, 1]  # the run lists its rows in another order and has an extra one
    names = [f"P{i}" for i in order] + ["P9"]
    q = np.vstack([Q[order], [[0.9, 0.9]]])
    runs = [{"experiment": "e", "dataset": "d", "model": m, "family": f, "split": "random",
             "seed": 0} for m, f in (("masked", "sams_vae"), ("cpa", "cpa_vae"))]
    paths = [_latents(str(tmp_path / "a.h5ad"), names, q), _latents(str(tmp_path / "b.h5ad"), names)]
    table = evaluate.mask_recovery(data_path, paths, runs, None)
    assert list(table["model"]) == ["masked", "masked"]
    by = table.set_index("matching")
    assert by.loc["mask", "f1"] == pytest.approx(0.4)
    assert by.loc["probability", "f1"] == 0.0
    assert by.loc["mask", "auroc"] == pytest.approx(0.25)
    assert by.loc["probability", "auroc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"no mask row for planted perturbations \['P3'\]"):
        evaluate.mask_recovery(
            data_path, [_latents(str(tmp_path / "c.h5ad"), names[1:], q[1:])], runs[:1], None)
    del data.uns["simulation"]
    data.write_h5ad(data_path)
    with pytest.raises(ValueError, match="no planted mask"):
        evaluate.mask_recovery(data_path, paths, runs, None)


@pytest.mark.slow
def test_normal_model_trains_and_evaluates_without_controls(tmp_path):
    import torch

    torch.set_num_threads(1)
    data_path, split_path, _ = _prepared(tmp_path)
    run_dir = str(tmp_path / "run")
    hp = {"family": "sams_vae", "n_latent": 4, "n_layers": 1, "encoder_n_hidden": 16,
          "decoder_n_hidden": 16, "embedding_encoder_n_layers": 1,
          "embedding_encoder_n_hidden": 8, "likelihood": "normal",
          "encoder_input_normalization": "standardize", "mask_prior_prob": 0.13}
    run = {"experiment": "e", "dataset": "d", "model": "m", "family": "sams_vae",
           "split": "random", "seed": 0}
    train_stage.train(data_path, split_path, hp, {"max_steps": 30, "batch_size": 32,
                                                  "val_every": 10}, run_dir, 0, progress=False,
                      identity=run)
    preds = os.path.join(run_dir, "predictions.h5ad")
    frame = evaluate.predict(data_path, split_path, os.path.join(run_dir, "model.pt"), preds,
                             n_particles=20, chunk=10)
    assert np.isfinite(frame.to_numpy()).all()
    assert (frame.to_numpy() < 0).any()  # the samples' mean, not log-normalised counts
    table = evaluate.score(run, data_path, split_path, preds, os.path.join(run_dir, "model.pt"),
                           os.path.join(run_dir, "metrics.tsv"), iwelbo_particles=10)
    # ATE metrics skipped (continuous, no controls); IWELBO reported and finite
    assert set(table["metric"]) == {"val_iwelbo", "test_iwelbo"}
    assert np.isfinite(table["value"]).all()
    latents = ad.read_h5ad(os.path.join(run_dir, "perturbation_latents.h5ad"))
    stage_tsv = tmp_path / "mask_recovery.tsv"
    out = evaluate.mask_recovery(data_path, [os.path.join(
        run_dir, "perturbation_latents.h5ad")], [run], str(stage_tsv))
    assert list(out["matching"]) == ["mask", "probability"]
    assert latents.n_obs == 6 and out["auroc"].between(0, 1).all()
    # the command line runs the same stage (identity from summary.json): the same table
    from samsbench.cli import main

    cli_tsv = tmp_path / "cli.tsv"
    assert main(["mask-recovery", "--data", data_path, "--run", run_dir,
                 "--out", str(cli_tsv)]) == 0
    cli = pd.read_csv(cli_tsv, sep="\t")
    assert list(cli.columns) == list(out.columns)
    assert cli[["model", "matching", "f1", "auroc"]].equals(
        pd.read_csv(stage_tsv, sep="\t")[["model", "matching", "f1", "auroc"]])


# -- ported onto the stages: typed hyperparameters, the registry entry, mask_kl_weight --------

def test_the_guard_reads_a_familys_typed_hyperparameters():
    from samsbench import models as registry

    ok = registry.hyperparameters("sams_vae", {"likelihood": "normal",
                                               "encoder_input_normalization": "standardize"})
    contract.require_model_fits("continuous", "sams_vae", ok)
    # the family's default likelihood is a count one: refused, naming it
    with pytest.raises(ContractError, match="likelihood 'library_nb'"):
        contract.require_model_fits("continuous", "sams_vae",
                                    registry.hyperparameters("sams_vae", {}))
    with pytest.raises(ContractError, match="likelihood None"):
        contract.require_model_fits("continuous", "additive_mean",
                                    registry.hyperparameters("additive_mean", {}))


def test_reference_sim_is_one_reader_with_a_planted_mask_and_no_gene_symbols():
    entry = data_stage.READERS["reference_sim"]
    assert entry.planted_mask and not entry.gene_symbols
    assert data_stage.required_inputs({"source": "reference_sim"}) == []
    assert data_stage.READERS["simulate"].planted_mask
    assert not data_stage.READERS["norman"].planted_mask


def test_mask_kl_weight_scales_only_the_mask_term():
    import torch

    from samsbench import models as registry
    from samsbench.nn import bernoulli_kl

    hp = {"n_latent": 3, "mask_prior_prob": 0.2, "mask_kl": "analytic",
          "mask_init_logits": 0.7, "embedding_encoder_n_hidden": 8}
    out = {}
    for weight in (1.0, 3.0):
        torch.manual_seed(0)
        model = registry.build("sams_vae", 5, ["A", "B"], {**hp, "mask_kl_weight": weight})
        torch.manual_seed(1)
        out[weight] = model.sample_globals(4)[1]
    # per particle and perturbation; the analytic term is minus the Bernoulli KL summed over
    # the 3 dims, the same for every draw, and the embedding term cancels
    assert out[1.0].shape == (4, 2)
    kl = float(bernoulli_kl(torch.tensor(0.7), model.mask_prior_logit)) * 3
    assert kl > 0
    assert torch.allclose(out[3.0] - out[1.0], torch.full((4, 2), -2 * kl), atol=1e-4)
    with pytest.raises(ValueError, match="mask_kl_weight must be > 0"):
        registry.build("sams_vae", 5, ["A", "B"], {**hp, "mask_kl_weight": 0.0})


def test_the_true_mask_scores_perfectly_under_both_matchings():
    """Exact half of the mask-recovery acceptance (issue 22): the planted mask itself, as a
    model's q(mask) with its columns permuted and extra empty columns, scores F1 = AUROC = 1 on
    both simulators; what a trained model reaches is a rate over seeds (test_recovery.py)."""
    from helpers import PRIOR_MATCHED_DATA
    from samsbench.data.simulate import simulate

    masks = [simulate_reference(**TINY)[2],
             np.asarray(simulate(**PRIOR_MATCHED_DATA).uns["simulation"]["true_mask"])]
    for true in masks:
        order = np.random.default_rng(0).permutation(true.shape[1] + 2)
        q = np.hstack([true, np.zeros((true.shape[0], 2))])[:, order]
        for matching in ("mask", "probability"):
            stats = mask_stats(true, q, matching=matching)
            assert stats["f1"] == 1.0 and stats["auroc"] == 1.0
            np.testing.assert_array_equal(q[:, stats["assignment"]], true)
