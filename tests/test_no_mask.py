"""The mask-off ablation: SAMS-VAE with M = 1, no mask parameters and no mask KL."""

import math

import numpy as np
import pytest
import torch

from helpers import TINY_HP, for_family
from samsbench import models as registry

PERTS = ["A", "B", "C"]


def _model(family, **hp):
    torch.manual_seed(0)
    return registry.build(family, 5, PERTS, {**for_family(family), **hp})


def _normal_log_density(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)


def test_mask_is_all_ones_and_global_kl_has_no_mask_term():
    model = _model("sams_vae_no_mask", embedding_prior_scale=0.7)
    assert not any("mask" in name for name, _ in model.named_parameters())
    torch.manual_seed(3)
    g, log_ratio = model.sample_globals(2)
    assert set(g) == {"E"} and g["E"].shape == (2, 3, TINY_HP["n_latent"])
    # Written out by hand: sum_k log N(E; 0, 0.7) - log q(E | M = 1), and nothing else; the
    # guide's input is the mask row of ones beside the one-hot label.
    one_hot = torch.eye(3)
    qE = model.embedding_encoder(torch.ones(3, TINY_HP["n_latent"]), one_hot)
    expected = (_normal_log_density(g["E"], torch.tensor(0.0), torch.tensor(0.7))
                - _normal_log_density(g["E"], qE.loc, qE.scale)).sum(-1)
    torch.testing.assert_close(log_ratio, expected, rtol=1e-6, atol=1e-6)
    # The shift is E itself.
    torch.testing.assert_close(model.shift(g), g["E"])
    latents = model.perturbation_latents()
    np.testing.assert_array_equal(latents["mask_prob"], np.ones((3, TINY_HP["n_latent"])))


def test_column_subset_draw_matches_the_full_draw():
    model = _model("sams_vae_no_mask")
    torch.manual_seed(5)
    full_g, full_ratio = model.sample_globals(2)
    torch.manual_seed(5)
    cols = torch.tensor([0, 2])
    sub_g, sub_ratio = model.sample_globals(2, cols)
    torch.testing.assert_close(sub_g["E"], full_g["E"][:, cols])
    torch.testing.assert_close(sub_ratio, full_ratio[:, cols])


def test_masked_model_differs_by_its_mask_term():
    """Same seed and weights: SAMS-VAE's analytic global term minus the ablation's, at a mask
    forced to 1, is exactly minus the Bernoulli KL of q(M) from the prior."""
    masked = _model("sams_vae", mask_kl="analytic")
    plain = _model("sams_vae_no_mask")
    plain.load_state_dict({k: v for k, v in masked.state_dict().items() if k != "mask_logits"})
    with torch.no_grad():
        masked.mask_logits.fill_(60.0)  # q(M = 1) = 1 in float32
    torch.manual_seed(1)
    _, r_masked = masked.sample_globals(1)
    torch.manual_seed(1)
    torch.rand((1, 3, TINY_HP["n_latent"]))  # the masked draw uses uniforms for M first
    _, r_plain = plain.sample_globals(1)
    prior = TINY_HP["mask_prior_prob"]
    kl_per_entry = math.log(1.0 / prior)  # KL(Bernoulli(1) || Bernoulli(prior))
    torch.testing.assert_close(r_plain - r_masked,
                               torch.full_like(r_plain, TINY_HP["n_latent"] * kl_per_entry),
                               rtol=1e-5, atol=1e-4)


def test_mask_settings_are_unknown_hyperparameters():
    # no mask: basis alignment and the mask prior are not its settings (an error, not ignored)
    for key, value in (("align_basis_at", 0.3), ("mask_prior_prob", 0.1)):
        with pytest.raises(registry.HyperparameterError,
                           match=f"sams_vae_no_mask: unknown hyperparameter '{key}'"):
            _model("sams_vae_no_mask", **{key: value})
