"""Recovery of planted truth on simulated data: a model's skill, from real training runs.

Training here is short (CI runs on two CPU cores). A trained model's score moves with the
training seed and with the CPU's floating-point rounding, so each threshold sits below the
lowest value measured over several seeds on two floating-point paths (the native kernels and
``ATEN_CPU_CAPABILITY=default``), by a margin the docstrings state. The exact half (the true
mask scores F1 = AUROC = 1) is in test_reference_sim.py.
"""

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import for_family
from samsbench.data import contract, splits
from samsbench import metrics
from samsbench.data.simulate import simulate
from samsbench.stages import evaluate
from samsbench.stages import train as train_stage
from helpers import PRIOR_MATCHED_DATA
from samsbench.enrichment.recovery import mask_stats

pytestmark = pytest.mark.slow

SMALL = dict(n_programs=3, targets_per_program=4, n_background=4, n_extra_dims=3,
             dims_per_program=2, n_doubles=12, n_genes=100, cells_per_perturbation=150,
             n_control=400)
HP = dict(n_latent=9, n_layers=1, encoder_n_hidden=64, decoder_n_hidden=64,
          embedding_encoder_n_layers=2, embedding_encoder_n_hidden=32)


def write(directory, kind, **sim):
    data_path = os.path.join(directory, "data.h5ad")
    contract.write(simulate(**sim), data_path)
    adata = contract.read(data_path)
    split_path = os.path.join(directory, "split.tsv")
    labels = splits.make_split(adata.obs["perturbation"].to_numpy(), kind, seed=0, fraction=0.5)
    splits.write_split(adata.obs_names, labels, split_path)
    return data_path, split_path


def train(data_path, split_path, run_dir, family, steps, **hp):
    torch.set_num_threads(1)
    hp = {**for_family(family, HP), "family": family, **hp}
    training = {"max_steps": steps, "batch_size": 128, "lr": 0.005, "val_every": 100,
                "iwelbo_particles": 20}
    train_stage.train(data_path, split_path, hp, training, run_dir, 0, progress=False)
    return ad.read_h5ad(os.path.join(run_dir, "perturbation_latents.h5ad"))


def matched_stats(data_path, latents):
    sim = contract.read(data_path).uns["simulation"]
    rows = [list(latents.obs_names).index(p) for p in sim["perturbations"]]
    return mask_stats(sim["true_mask"], latents.layers["mask_prob"][rows])


def test_mask_stats_hand_computed():
    true = np.array([[1, 0], [0, 1], [1, 1]])
    # learned dims are the true ones swapped; one false positive and one miss
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    stats = mask_stats(true, probs)
    assert stats["assignment"] == [1, 0]
    # matched hard mask [[1,0],[0,1],[0,1]] against truth: 3 of 4 true entries, 3 of 3 predicted
    assert stats["precision"] == pytest.approx(1.0)
    assert stats["recall"] == pytest.approx(0.75)
    assert stats["f1"] == pytest.approx(6 / 7)
    # matched probabilities [[.9,.1],[.2,.8],[.3,.7]]: every true entry (.9,.8,.3,.7) is above
    # both negatives (.1,.2), so AUROC = 1
    assert stats["auroc"] == pytest.approx(1.0)


def test_sams_vae_recovers_masks_drawn_from_its_own_prior(tmp_path):
    """Prior-matched recovery with the latent-basis alignment (`align_basis_at`).

    Measured with exactly these settings over training seeds 0, 1, 2 on two floating-point
    paths (native / ``ATEN_CPU_CAPABILITY=default``): AUROC 0.919 / 0.924, 0.916 / 0.910,
    0.907 / 0.904 (mean 0.913, sd 0.008, range 0.904-0.924); density 0.161-0.186 (truth
    0.128). The test trains seed 0 and asserts AUROC >= 0.87, 0.034 (about four sd) below the
    lowest of the six. The same model without alignment reaches AUROC 0.816 and density 0.43
    (its latent space ends rotated against the true axes; docs/mask_recovery.md,
    bench/studies/prior_recovery.py).
    """
    data_path, split_path = write(str(tmp_path), "random", **PRIOR_MATCHED_DATA)
    latents = train(data_path, split_path, str(tmp_path / "run"), "sams_vae", 3000,
                    n_latent=12, embedding_encoder_n_hidden=32, mask_prior_prob=0.15,
                    embedding_prior_scale=2.0, align_basis_at=0.3)
    stats = matched_stats(data_path, latents)
    print("prior-matched SAMS-VAE, aligned", stats)
    assert stats["auroc"] >= 0.87
    assert 0.08 <= stats["density"] <= 0.25


def test_additive_models_predict_held_out_combinations_and_svae_plus_cannot(tmp_path):
    data_path, split_path = write(str(tmp_path), "ood", **SMALL)
    adata = contract.read(data_path)
    split = splits.read_split(split_path, adata.obs_names)
    held_out = sorted(set(adata.obs["perturbation"][split == "test"]))
    assert held_out and all("+" in label for label in held_out)
    true_ate = metrics.data_ate(adata).loc[held_out]
    scores = {}
    for family, steps, encoding in (("cpa_vae", 1500, "additive"), ("additive_mean", 0, "additive"),
                                    ("svae_plus", 1500, "unique")):
        run = str(tmp_path / family)
        train(data_path, split_path, run, family, max(steps, 1), encoding=encoding)
        predictions = os.path.join(run, "predictions.h5ad")
        evaluate.predict(data_path, split_path, os.path.join(run, "model.pt"), predictions,
                          n_particles=300)
        pred = evaluate.read_predictions(predictions, adata).loc[held_out]
        scores[family] = float(np.corrcoef(pred.to_numpy().ravel(), true_ate.to_numpy().ravel())[0, 1])
    print("held-out combination ATE Pearson", scores)
    # Measured on two floating-point paths (native / ATEN_CPU_CAPABILITY=default), seed 0:
    # cpa_vae 0.970 / 0.968, additive_mean 0.862 (no training), svae_plus -0.23 / +0.25. SVAE+
    # has never seen these combinations, so its r is chance and its sign a coin flip: the bound
    # is 0.5, twice the largest measured.
    assert scores["cpa_vae"] >= 0.8
    assert scores["additive_mean"] >= 0.8
    assert abs(scores["svae_plus"]) < 0.5
