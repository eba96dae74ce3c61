"""CPA-VAE (models.md §2.3): a SAMS-VAE without mask, z = z_basal + D @ E."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal

from samsbench.models.base import LatentModel, standard_normal_like
from samsbench.nn import Decoder, GaussianEncoder


class CpaVAE(LatentModel):
    family = "cpa_vae"

    def __init__(self, n_genes: int, perturbations: list[str], hp: dict):
        super().__init__(n_genes, perturbations, hp)
        T, K = self.n_perturbations, int(hp["n_latent"])
        self.mean_field_encoder = bool(hp.get("mean_field_encoder", False))
        self.embedding_prior_scale = float(hp.get("embedding_prior_scale", 1.0))
        self.E_loc = nn.Parameter(float(hp.get("embedding_loc_init_scale", 0.0)) * torch.randn(T, K))
        self.E_log_scale = nn.Parameter(
            torch.full((T, K), math.log(float(hp.get("embedding_scale_init", 1.0))))
        )
        n_in = n_genes + (0 if self.mean_field_encoder else K)
        self.encoder = GaussianEncoder(n_in, K, int(hp["encoder_n_hidden"]), int(hp["n_layers"]))
        self.decoder = Decoder(K, n_genes, int(hp["decoder_n_hidden"]), int(hp["n_layers"]),
                               hp.get("likelihood", "library_nb"))

    def sample_globals(self, n_particles: int):
        qE = Normal(self.E_loc, torch.exp(self.E_log_scale) + 1e-4)
        E = qE.rsample((n_particles,))
        log_ratio = (Normal(0.0, self.embedding_prior_scale).log_prob(E) - qE.log_prob(E)).sum(-1)
        return {"E": E}, log_ratio

    def cell_context(self, dose, g):
        return dose.apply(g["E"])

    def local_posterior(self, xn, shift):
        return self.encoder(xn) if self.mean_field_encoder else self.encoder(xn, shift)

    def local_prior(self, shift):
        return standard_normal_like(shift)

    def decoder_input(self, z_basal, shift):
        return z_basal + shift

    @torch.no_grad()
    def perturbation_latents(self):
        return {"embedding_mean": self.E_loc.detach().cpu().numpy()}
