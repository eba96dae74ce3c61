"""CPA-VAE (the reference's CPAVAEModel): a SAMS-VAE without mask, z = z_basal + D @ E."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal

from samsbench.models.base import FreeEmbeddingHyperparameters, ShiftModel
from samsbench.nn import normal_log_prob, rows_of


class CpaVAE(ShiftModel):
    family = "cpa_vae"
    label = "CPA-VAE"
    colour = "#d95f02"
    Hyperparameters = FreeEmbeddingHyperparameters
    global_variables = ("E",)
    samples_column_subsets = True

    def __init__(self, n_genes: int, perturbations: list[str], hparams):
        super().__init__(n_genes, perturbations, hparams)
        hp, T, K = self.hparams, self.n_perturbations, self.n_latent
        self.embedding_prior_scale = hp.embedding_prior_scale
        self.E_loc = nn.Parameter(hp.embedding_loc_init_scale * torch.randn(T, K))
        self.E_log_scale = nn.Parameter(torch.full((T, K), math.log(hp.embedding_scale_init)))
        self.build_networks()

    def global_parameters(self):
        return [self.E_loc, self.E_log_scale]

    def sample_globals(self, n_particles: int, columns: torch.Tensor | None = None):
        scale = torch.exp(rows_of(self.E_log_scale, columns)) + 1e-4
        qE = Normal(rows_of(self.E_loc, columns), scale)
        # Noise for every perturbation, so the rows of ``columns`` get the full draw's values.
        noise = torch.empty((n_particles,) + self.E_loc.shape, dtype=self.E_loc.dtype,
                            device=self.E_loc.device).normal_()
        E = qE.loc + qE.scale * rows_of(noise, columns)
        log_ratio = (normal_log_prob(E, self.embedding_prior_scale) - qE.log_prob(E)).sum(-1)
        return {"E": E}, log_ratio

    def shift(self, g):
        return g["E"]

    @torch.no_grad()
    def perturbation_latents(self):
        return {"embedding_mean": self.E_loc.detach().cpu().numpy()}
