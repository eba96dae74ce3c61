"""SAMS-VAE with the mask fixed to 1 (the mask-off ablation; beyond the reference).

The same model and correlated guide as ``sams_vae`` with M = 1 everywhere: z = z_basal + D @ E,
no mask parameters and no mask term in the global KL (only log p(E) - log q(E | M = 1)). This is
PerturBench's tuned SAMS-VAE setting (sparsity off); next to ``sams_vae`` it shows what the
sparse mask buys in IWELBO, ATE and enrichment. Its ``mask_prob`` layer is all ones, so mask
enrichment and seed stability see a dense mask by construction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Normal

from samsbench.models.sams_vae import SamsVAE
from samsbench.nn import rows_of


class SamsVAENoMask(SamsVAE):
    family = "sams_vae_no_mask"
    correlated = True
    has_mask = False

    def __init__(self, n_genes: int, perturbations: list[str], hp: dict):
        if hp.get("align_basis_at"):
            raise ValueError("sams_vae_no_mask has no mask to align; unset align_basis_at")
        super().__init__(n_genes, perturbations, hp)
        # No mask parameters: a fixed buffer of ones stands where q(M)'s logits would be.
        shape = self.mask_logits.shape
        del self.mask_logits
        self.register_buffer("mask", torch.ones(shape), persistent=False)

    def sample_globals(self, n_particles: int, columns: torch.Tensor | None = None):
        full = (n_particles,) + self.mask.shape
        mask = rows_of(self.mask.expand(full), columns)
        qE = self.q_embedding(mask, columns)
        noise = torch.empty(full, dtype=self.mask.dtype, device=self.mask.device).normal_()
        E = qE.loc + qE.scale * rows_of(noise, columns)
        log_ratio = (Normal(0.0, self.embedding_prior_scale).log_prob(E) - qE.log_prob(E)).sum(-1)
        return {"mask": mask, "E": E}, log_ratio

    @torch.no_grad()
    def perturbation_latents(self):
        loc = self.q_embedding(self.mask).loc
        return {"mask_prob": np.ones(tuple(self.mask.shape), dtype=np.float32),
                "embedding_mean": loc.cpu().numpy()}

    @torch.no_grad()
    def mean_shift(self, n_samples: int = 256) -> torch.Tensor:
        return self.q_embedding(self.mask).loc
