"""SAMS-VAE (Bereket & Karaletsos 2023): z = z_basal + D @ (M * E), with a sparse mask M and embedding E.

Guides: ``sams_vae`` (correlated: q(E | M) from an MLP on the sampled mask row and the one-hot
perturbation) and ``sams_vae_mean_field`` (independent free q(M), q(E)).
"""

import dataclasses
import math
from typing import Literal

import torch
from torch import nn
from torch.distributions import Normal

from samsbench.models.base import FreeEmbeddingHyperparameters, ShiftHyperparameters, ShiftModel
from samsbench.nn import (GaussianEncoder, OneHotRows, bernoulli_kl, bernoulli_log_prob,
                          host_reads_free, logit, normal_log_prob, rows_of, st_bernoulli_sample)


@dataclasses.dataclass(frozen=True)
class SamsVAEHyperparameters(ShiftHyperparameters):
    """Both guides. ``mask_kl``: "sample" (the reference) charges the mask's log p - log q at
    the sampled mask, a one-sample estimate; "analytic" minus the exact Bernoulli KL, same
    expectation, no noise. ``align_basis_at`` (beyond the reference; None = off): at this
    fraction of max_steps the latent basis is rotated to the sparsest one (``align_basis``).
    It is the model's setting, not training's, because only this family can do it and one
    experiment trains the family both with and without it."""

    mask_prior_prob: float = 0.01
    mask_init_logits: float = 0.0
    mask_kl: Literal["sample", "analytic"] = "sample"
    align_basis_at: float | None = None
    # Beyond the reference (1 = the ELBO): a weight on the mask's log p - log q, so that the
    # sparsity prior is not drowned by the N_t cells' likelihood (docs/mask_recovery.md).
    mask_kl_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class CorrelatedGuideHyperparameters(SamsVAEHyperparameters):
    """q(E | M) from an MLP of this depth and width on the mask row and the one-hot label."""

    embedding_encoder_n_layers: int = 2
    embedding_encoder_n_hidden: int = 200


@dataclasses.dataclass(frozen=True)
class MeanFieldGuideHyperparameters(SamsVAEHyperparameters, FreeEmbeddingHyperparameters):
    pass


class SamsVAE(ShiftModel):
    family = "sams_vae"
    label = "SAMS-VAE (correlated)"
    colour = "#1b9e77"
    has_masks = True
    Hyperparameters = CorrelatedGuideHyperparameters
    global_variables = ("mask", "E")
    correlated = True
    samples_column_subsets = True

    def __init__(self, n_genes: int, perturbations: list[str], hparams):
        super().__init__(n_genes, perturbations, hparams)
        hp, T, K = self.hparams, self.n_perturbations, self.n_latent
        self.mask_prior_logit = logit(hp.mask_prior_prob)
        self.mask_kl = hp.mask_kl
        self.embedding_prior_scale = hp.embedding_prior_scale
        if not hp.mask_kl_weight > 0:
            raise ValueError(f"mask_kl_weight must be > 0, got {hp.mask_kl_weight}")
        self.mask_kl_weight = hp.mask_kl_weight
        self.mask_logits = nn.Parameter(torch.full((T, K), hp.mask_init_logits))
        if self.correlated:
            self.embedding_encoder = GaussianEncoder(
                K + T, K, hp.embedding_encoder_n_hidden, hp.embedding_encoder_n_layers)
        else:
            self.E_loc = nn.Parameter(hp.embedding_loc_init_scale * torch.randn(T, K))
            self.E_log_scale = nn.Parameter(torch.full((T, K), math.log(hp.embedding_scale_init)))
        self.build_networks()

    def global_parameters(self):
        guide = (list(self.embedding_encoder.parameters()) if self.correlated
                 else [self.E_loc, self.E_log_scale])
        return [self.mask_logits, *guide]

    def after_step(self, step: int, max_steps: int) -> bool:
        at = self.hparams.align_basis_at
        if at and step == round(at * max_steps):
            self.align_basis()
            return True
        return False

    def q_embedding(self, mask: torch.Tensor, columns: torch.Tensor | None = None) -> Normal:
        if self.correlated:
            return self.embedding_encoder(mask, OneHotRows(self.n_perturbations, columns))
        return Normal(rows_of(self.E_loc, columns),  # floor on the std here
                      torch.exp(rows_of(self.E_log_scale, columns)) + 1e-4)

    def sample_globals(self, n_particles: int, columns: torch.Tensor | None = None):
        # The noise is drawn for every perturbation, in the order the full draw uses, so the
        # rows of ``columns`` get the values that the full draw gives them.
        full = (n_particles,) + self.mask_logits.shape
        like = {"dtype": self.mask_logits.dtype, "device": self.mask_logits.device}
        logits = rows_of(self.mask_logits, columns)
        mask = st_bernoulli_sample(logits, noise=rows_of(torch.rand(full, **like), columns))
        qE = self.q_embedding(mask, columns)
        E = qE.loc + qE.scale * rows_of(torch.empty(full, **like).normal_(), columns)
        log_ratio = (normal_log_prob(E, self.embedding_prior_scale) - qE.log_prob(E)).sum(-1)
        if self.mask_kl == "sample":
            prior = logits.new_full((), self.mask_prior_logit)
            mask_ratio = bernoulli_log_prob(prior, mask) - bernoulli_log_prob(logits, mask)
        else:
            mask_ratio = -bernoulli_kl(logits, self.mask_prior_logit).expand_as(mask)
        return {"mask": mask, "E": E}, log_ratio + self.mask_kl_weight * mask_ratio.sum(-1)

    def shift(self, g):
        return g["mask"] * g["E"]

    @torch.no_grad()
    def perturbation_latents(self):
        out = {"mask_prob": torch.sigmoid(self.mask_logits).cpu().numpy()}
        if self.correlated:
            # E[E | M] averaged over q(M), by Monte Carlo (the embedding depends on the mask).
            mask = st_bernoulli_sample(self.mask_logits, (64,))
            out["embedding_mean"] = self.q_embedding(mask).loc.mean(0).cpu().numpy()
        else:
            out["embedding_mean"] = self.E_loc.detach().cpu().numpy()
        return out

    @torch.no_grad()
    def mean_shift(self, n_samples: int = 256) -> torch.Tensor:
        """E_q[M * E] per perturbation, (T, K), by Monte Carlo over the mask."""
        mask = st_bernoulli_sample(self.mask_logits, (n_samples,))
        return (mask * self.q_embedding(mask).loc).mean(0)

    @torch.no_grad()
    def align_basis(self) -> torch.Tensor:
        """Rotate the latent basis to the one in which the mean shifts are sparsest (varimax);
        returns the rotation R (new coordinates z' = R^T z).

        The likelihood does not change under a rotation of z (the basal prior is isotropic and
        the decoder's first layer absorbs it; only the diagonal encoder variances are kept as
        they are), so only the mask's sparsity prior chooses the axes, and from a random start
        training settles in a rotated basis with dense masks (docs/mask_recovery.md). The
        layers that read or write z are rotated exactly; the per-perturbation guide restarts
        from the rotated shifts: entries whose |shift| is at least a quarter of the largest
        entry of its perturbation start at q = 0.5, the others at the prior's q; the
        mean-field guide's E starts at the rotated shift (0 where off), the correlated guide's
        E encoder has its mean head rotated.
        """
        shift = self.mean_shift()
        R = varimax(shift)
        new = shift @ R
        first = self.decoder.trunk.first
        first.weight.copy_(first.weight @ R)
        self.encoder.loc.weight.copy_(R.T @ self.encoder.loc.weight)
        self.encoder.loc.bias.copy_(R.T @ self.encoder.loc.bias)
        if not self.mean_field_encoder:  # the encoder's shift input columns come after the genes
            w = self.encoder.trunk.first.weight
            w[:, self.n_genes :] = w[:, self.n_genes :] @ R
        size = new.abs()
        on = size >= 0.25 * size.amax(1, keepdim=True).clamp_min(1e-12)
        self.mask_logits.copy_(torch.where(on, 0.0, self.mask_prior_logit))
        if self.correlated:
            head = self.embedding_encoder.loc
            head.weight.copy_(R.T @ head.weight)
            head.bias.copy_(R.T @ head.bias)
        else:
            self.E_loc.copy_(torch.where(on, new, 0.0))
        return R


def varimax(loadings: torch.Tensor, max_iter: int = 500, tol: float = 1e-8,
            check_every: int | None = None) -> torch.Tensor:
    """Orthogonal rotation R maximising the variance of the squared entries of loadings @ R
    (Kaiser's varimax), by the usual SVD iteration.

    Stops at the first checked iteration whose objective gained less than ``tol`` (relative)
    over the iteration before. The objective stays on the device; it is read every
    ``check_every`` iterations (default: every one on CPU, where reading is free, every 25th
    on a GPU, where each read waits for the device): at most 20 reads instead of 500. Past
    convergence an iteration leaves R at its fixed point, so checking late changes nothing
    but the time."""
    n, k = loadings.shape
    every = check_every or (1 if host_reads_free(loadings) else 25)
    R = torch.eye(k, dtype=loadings.dtype, device=loadings.device)
    previous = loadings.new_zeros(())
    for it in range(max_iter):
        rotated = loadings @ R
        target = rotated**3 - rotated * (rotated**2).sum(0, keepdim=True) / n
        u, s, vt = torch.linalg.svd(loadings.T @ target)
        R = u @ vt
        objective = s.sum()
        if (it + 1) % every == 0 and bool(objective <= previous * (1 + tol)):
            break
        previous = objective
    return R


class SamsVAEMeanField(SamsVAE):
    family = "sams_vae_mean_field"
    label = "SAMS-VAE (mean field)"
    colour = "#66c2a5"
    Hyperparameters = MeanFieldGuideHyperparameters
    correlated = False
