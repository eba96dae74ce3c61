"""Data like the reference's own SAMS-VAE simulator (its simulate_data_sams_vae), as a contract dataset.

The reference draws masks ~ Bernoulli(2/15), effects of magnitude N(5, 0.5) with random signs,
K = 15 latent dims, T = 100 perturbations, G = 100 genes, a 4 x 50 LeakyReLU(0.2) decoder with
orthogonal weights, genes scaled to unit variance and Gaussian noise carrying 20 % of the
variance. We follow it with our own random stream (not the reference's RNG order), fewer cells
per perturbation (CPU budget) and, optionally, unperturbed control cells (the reference has none
and uses perturbation "0" as its control).

The values are real (Gaussian), so the file is in the contract's continuous mode
(``uns["value_kind"] = "continuous"``); without control cells it also declares
``uns["no_controls"] = True``. Ground truth goes to ``uns["simulation"]`` under the keys the
embedded simulation uses (``perturbations``, ``true_mask``) plus ``true_effects``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import torch

from samsbench.data.contract import DEFAULT_CONTROL, NO_CONTROLS_KEY, VALUE_KIND_KEY, validate


def perturbation_names(T: int) -> list[str]:
    return [f"P{t:03d}" for t in range(T)]


def simulate_reference(n_train: int = 200, n_val: int = 50, n_test: int = 50, K: int = 15,
                       T: int = 100, G: int = 100, mask_prior: float = 2 / 15,
                       n_control: int = 0, noise_fraction: float = 0.2, seed: int = 0):
    """(AnnData with float X, the reference's row-block split per cell, true mask, effects).

    Perturbed cells are in blocks of T (row i of them is replicate i // T); the first
    ``n_train`` blocks are train, then val, then test, as the reference splits them. Controls
    (if any) come first and are split 70/15/15 at random.
    """
    if T < 1 or K < 1 or G < 1 or min(n_train, n_val, n_test) < 0 or n_control < 0:
        raise ValueError(f"bad simulation size: T={T}, K={K}, G={G}, cells "
                         f"{n_train}/{n_val}/{n_test}, n_control={n_control}")
    if not 0 < noise_fraction < 1:
        raise ValueError(f"noise_fraction must be in (0, 1), got {noise_fraction}")
    gen = torch.Generator().manual_seed(seed)
    mask = torch.bernoulli(torch.full((T, K), mask_prior), generator=gen)
    magnitude = 5.0 + 0.5 * torch.randn(T, K, generator=gen)
    sign = 2 * torch.bernoulli(torch.full((T, K), 0.5), generator=gen) - 1
    effects = mask * sign * magnitude
    widths = [K, 50, 50, 50, 50, G]
    weights = [torch.nn.init.orthogonal_(torch.empty(o, i), generator=gen)
               for i, o in zip(widths[:-1], widths[1:])]
    per_pert = n_train + n_val + n_test
    names = perturbation_names(T)
    labels = np.array([DEFAULT_CONTROL] * n_control + names * per_pert)
    shift = torch.cat([torch.zeros(n_control, K), effects.repeat(per_pert, 1)])
    z = torch.randn(len(labels), K, generator=gen) + shift
    h = z
    for i, w in enumerate(weights):
        h = h @ w.T
        if i < len(weights) - 1:
            h = torch.nn.functional.leaky_relu(h, 0.2)
    std = h.std(0)
    mean = h / torch.where(std > 0, std, torch.ones_like(std))
    var = noise_fraction / (1 - noise_fraction) * mean.var(0)
    x = mean + torch.sqrt(torch.where(var > 0, var, torch.ones_like(var))) * torch.randn(
        mean.shape, generator=gen)
    split = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    split[:n_control] = rng.choice(["train", "val", "test"], n_control, p=[0.7, 0.15, 0.15])
    block = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    split[n_control:] = np.repeat(block, T)
    adata = ad.AnnData(x.numpy().astype(np.float32),
                       obs=pd.DataFrame({"perturbation": labels, "reference_split": split},
                                        index=[f"c{i}" for i in range(len(labels))]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))
    adata.uns["control_label"] = DEFAULT_CONTROL
    adata.uns[VALUE_KIND_KEY] = "continuous"
    if n_control == 0:
        adata.uns[NO_CONTROLS_KEY] = True
    adata.uns["simulation"] = {
        "generator": "reference_sams_vae (simulate_data_sams_vae)",
        "seed": seed,
        "perturbations": np.array(names, dtype=object),
        "true_mask": mask.numpy(),
        "true_effects": effects.numpy(),
    }
    validate(adata)
    return adata, split, mask.numpy(), effects.numpy()


def reference_dataset(**params) -> ad.AnnData:
    """The registered dataset ``reference_sim``: the AnnData of ``simulate_reference``."""
    return simulate_reference(**params)[0]
