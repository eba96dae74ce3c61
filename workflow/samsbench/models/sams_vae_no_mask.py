"""SAMS-VAE with the mask fixed to 1 (the mask-off ablation; beyond the reference).

The model and correlated guide of ``sams_vae`` with M = 1 everywhere: z = z_basal + D @ E,
q(E | M = 1) from the same MLP on (mask row, one-hot label), no mask parameters and no mask
term in the global KL (only log p(E) - log q(E | M = 1)). This is PerturBench's tuned SAMS-VAE
setting (sparsity off); next to ``sams_vae`` it shows what the sparse mask buys in IWELBO, ATE
and enrichment. Unlike ``cpa_vae`` (free q(E)), the guide is amortised, so an unseen
perturbation's column still gets the network's shared effect. Its ``mask_prob`` latents are all
ones: a dense mask by construction, which mask stability leaves out (``enrichment.stability``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.distributions import Normal

from samsbench.models.base import ShiftHyperparameters, ShiftModel
from samsbench.nn import GaussianEncoder, OneHotRows, normal_log_prob, rows_of


@dataclasses.dataclass(frozen=True)
class NoMaskHyperparameters(ShiftHyperparameters):
    """The correlated guide's MLP, as in ``sams_vae``; no mask settings (a mask key in the
    model's own block is an unknown-hyperparameter error)."""

    embedding_encoder_n_layers: int = 2
    embedding_encoder_n_hidden: int = 200


class SamsVAENoMask(ShiftModel):
    family = "sams_vae_no_mask"
    label = "SAMS-VAE (mask off)"
    colour = "#a6d854"
    has_masks = False
    Hyperparameters = NoMaskHyperparameters
    global_variables = ("E",)
    samples_column_subsets = True

    def __init__(self, n_genes: int, perturbations: list[str], hparams):
        super().__init__(n_genes, perturbations, hparams)
        hp, T, K = self.hparams, self.n_perturbations, self.n_latent
        self.embedding_prior_scale = hp.embedding_prior_scale
        # same name and shape as sams_vae's guide network, so weights transfer between them
        self.embedding_encoder = GaussianEncoder(
            K + T, K, hp.embedding_encoder_n_hidden, hp.embedding_encoder_n_layers)
        self.register_buffer("ones", torch.ones(T, K), persistent=False)
        self.build_networks()

    def global_parameters(self):
        return list(self.embedding_encoder.parameters())

    def q_embedding(self, columns: torch.Tensor | None = None) -> Normal:
        """q(E | M = 1) of the perturbations ``columns`` (all by default), (A, K)."""
        return self.embedding_encoder(rows_of(self.ones, columns),
                                      OneHotRows(self.n_perturbations, columns))

    def sample_globals(self, n_particles: int, columns: torch.Tensor | None = None):
        # noise for every perturbation, in the full draw's order: a column subset gets the
        # rows the full draw gives it
        full = (n_particles,) + self.ones.shape
        qE = self.q_embedding(columns)
        noise = torch.empty(full, dtype=self.ones.dtype, device=self.ones.device).normal_()
        E = qE.loc + qE.scale * rows_of(noise, columns)
        log_ratio = (normal_log_prob(E, self.embedding_prior_scale) - qE.log_prob(E)).sum(-1)
        return {"E": E}, log_ratio

    def shift(self, g):
        return g["E"]

    @torch.no_grad()
    def perturbation_latents(self):
        return {"mask_prob": np.ones(tuple(self.ones.shape), dtype=np.float32),
                "embedding_mean": self.q_embedding().loc.cpu().numpy()}

    @torch.no_grad()
    def mean_shift(self, n_samples: int = 256) -> torch.Tensor:
        return self.q_embedding().loc
