"""SVAE+ (Lopez et al. 2022; models.md §2.5): z ~ N(M_t * mu_t, I) for a cell of perturbation t.

The mask probabilities are MAP estimates (a point mass) under a Beta(c1, c2) prior; mu is a
learned parameter, not a latent. Dosages must be one-hot, so combinations are encoded as their
own perturbations. The mask's log p - log q cancels exactly (same Bernoulli(pi) on both sides),
so only the Beta prior of pi is charged to the cells.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Beta, Normal

from samsbench.models.base import LatentModel
from samsbench.nn import Decoder, GaussianEncoder, st_bernoulli_sample

_EPS = torch.finfo(torch.float32).eps


class SvaePlus(LatentModel):
    family = "svae_plus"
    requires_one_hot = True

    def __init__(self, n_genes: int, perturbations: list[str], hp: dict):
        super().__init__(n_genes, perturbations, hp)
        T, K = self.n_perturbations, int(hp["n_latent"])
        self.mask_logits = nn.Parameter(torch.full((T, K), float(hp.get("mask_init_logits", 0.0))))
        self.shift = nn.Parameter(0.1 * torch.randn(T, K))  # "action prior mean"
        self.register_buffer("beta_c1", torch.tensor(float(hp.get("mask_beta_concentration_1", 1.0))))
        self.register_buffer("beta_c2", torch.tensor(float(hp.get("mask_beta_concentration_2", 2.0))))
        self.encoder = GaussianEncoder(n_genes, K, int(hp["encoder_n_hidden"]), int(hp["n_layers"]))
        self.decoder = Decoder(K, n_genes, int(hp["decoder_n_hidden"]), int(hp["n_layers"]),
                               hp.get("likelihood", "library_nb"))

    def sample_globals(self, n_particles: int):
        # Clamped so that the Beta density stays finite when a probability saturates.
        pi = torch.sigmoid(self.mask_logits).clamp(_EPS, 1 - _EPS)
        mask = st_bernoulli_sample(torch.logit(pi), (n_particles,))
        log_ratio = Beta(self.beta_c1, self.beta_c2).log_prob(pi).sum(-1)
        return {"mask": mask}, log_ratio.expand(n_particles, -1)

    def cell_context(self, dose, g):
        return dose.apply(g["mask"] * self.shift)  # prior mean; 0 for control cells

    def local_posterior(self, xn, prior_mean):
        return self.encoder(xn)

    def local_prior(self, prior_mean):
        return Normal(prior_mean, torch.ones_like(prior_mean))

    def decoder_input(self, z, prior_mean):
        return z

    @torch.no_grad()
    def perturbation_latents(self):
        return {
            "mask_prob": torch.sigmoid(self.mask_logits).cpu().numpy(),
            "embedding_mean": self.shift.detach().cpu().numpy(),
        }
