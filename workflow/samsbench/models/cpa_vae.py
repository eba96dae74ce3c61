"""CPA-VAE (models.md §2.3): a SAMS-VAE without mask, z = z_basal + D @ E."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal

from samsbench.models.base import ShiftModel
from samsbench.nn import rows_of


class CpaVAE(ShiftModel):
    family = "cpa_vae"
    samples_column_subsets = True

    def __init__(self, n_genes: int, perturbations: list[str], hp: dict):
        super().__init__(n_genes, perturbations, hp)
        T, K = self.n_perturbations, int(hp["n_latent"])
        self.n_latent = K
        self.embedding_prior_scale = float(hp.get("embedding_prior_scale", 1.0))
        self.E_loc = nn.Parameter(float(hp.get("embedding_loc_init_scale", 0.0)) * torch.randn(T, K))
        self.E_log_scale = nn.Parameter(
            torch.full((T, K), math.log(float(hp.get("embedding_scale_init", 1.0))))
        )
        self.build_networks(n_genes, hp)

    def sample_globals(self, n_particles: int, columns: torch.Tensor | None = None):
        scale = torch.exp(rows_of(self.E_log_scale, columns)) + 1e-4
        qE = Normal(rows_of(self.E_loc, columns), scale)
        # Noise for every perturbation, so the rows of ``columns`` get the full draw's values.
        noise = torch.empty((n_particles,) + self.E_loc.shape, dtype=self.E_loc.dtype,
                            device=self.E_loc.device).normal_()
        E = qE.loc + qE.scale * rows_of(noise, columns)
        log_ratio = (Normal(0.0, self.embedding_prior_scale).log_prob(E) - qE.log_prob(E)).sum(-1)
        return {"E": E}, log_ratio

    def shift(self, g):
        return g["E"]

    @torch.no_grad()
    def perturbation_latents(self):
        return {"embedding_mean": self.E_loc.detach().cpu().numpy()}
