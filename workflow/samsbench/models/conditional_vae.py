"""Conditional VAE (the reference's ConditionalVAEModel): the decoder reads [z, d]; q(z | x, d); no global latents."""

from __future__ import annotations

import torch
from torch.distributions import Normal

from samsbench.models.base import LatentModel
from samsbench.nn import GaussianEncoder


class ConditionalVAE(LatentModel):
    family = "conditional_vae"
    label = "Conditional VAE"
    colour = "#7570b3"

    def __init__(self, n_genes: int, perturbations: list[str], hparams):
        super().__init__(n_genes, perturbations, hparams)
        hp, T, K = self.hparams, self.n_perturbations, self.n_latent
        self.encoder = GaussianEncoder(n_genes + T, K, hp.encoder_n_hidden, hp.n_layers)
        self.decoder = self.decoder_for(K + T)

    def cell_context(self, dose, g):
        return dose.dense

    def local_posterior(self, xn, D):
        return self.encoder(xn, D)

    def local_prior(self, D):
        zeros = D.new_zeros(D.shape[:-1] + (self.n_latent,))
        return Normal(zeros, torch.ones_like(zeros))

    def decoder_input(self, z, D):
        return torch.cat([z, D.expand(z.shape[:-1] + D.shape[-1:])], -1)
