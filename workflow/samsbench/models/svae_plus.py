"""SVAE+ (Lopez et al. 2022, as the reference re-implements it): z ~ N(M_t * mu_t, I) for a cell of perturbation t.

The mask probabilities are MAP estimates (a point mass) under a Beta(c1, c2) prior; mu is a
learned parameter, not a latent. Dosages must be one-hot, so combinations are encoded as their
own perturbations. The mask's log p - log q cancels exactly (same Bernoulli(pi) on both sides),
so only the Beta prior of pi is charged to the cells.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn
from torch.distributions import Beta, Normal

from samsbench.models.base import LatentHyperparameters, LatentModel
from samsbench.nn import GaussianEncoder, st_bernoulli_sample

_EPS = torch.finfo(torch.float32).eps


@dataclasses.dataclass(frozen=True)
class SvaePlusHyperparameters(LatentHyperparameters):
    """One-hot dosages only, hence ``encoding`` unique; the mask probabilities' Beta(c1, c2)
    prior; the mask logits' initial value."""

    encoding: Literal["additive", "unique"] = "unique"
    mask_init_logits: float = 0.0
    mask_beta_concentration_1: float = 1.0
    mask_beta_concentration_2: float = 2.0


class SvaePlus(LatentModel):
    family = "svae_plus"
    label = "SVAE+"
    colour = "#e7298a"
    Hyperparameters = SvaePlusHyperparameters
    global_variables = ("mask",)
    requires_one_hot = True

    def __init__(self, n_genes: int, perturbations: list[str], hparams):
        super().__init__(n_genes, perturbations, hparams)
        hp, T, K = self.hparams, self.n_perturbations, self.n_latent
        self.mask_logits = nn.Parameter(torch.full((T, K), hp.mask_init_logits))
        self.shift = nn.Parameter(0.1 * torch.randn(T, K))  # "action prior mean"
        self.register_buffer("beta_c1", torch.tensor(hp.mask_beta_concentration_1))
        self.register_buffer("beta_c2", torch.tensor(hp.mask_beta_concentration_2))
        self.encoder = GaussianEncoder(n_genes, K, hp.encoder_n_hidden, hp.n_layers)
        self.decoder = self.decoder_for(K)

    def global_parameters(self):
        return [self.mask_logits, self.shift]

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
