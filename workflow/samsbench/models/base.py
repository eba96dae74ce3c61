"""The protocol every model family follows, so one engine (inference.py) serves them all.

A family with a likelihood is a ``LatentModel``. Per training step the engine asks it for:

* ``sample_globals(P)``: P joint samples of the per-perturbation latents from the guide, and
  their ``log p - log q`` summed over latent dims, shape ``(P, T)`` (None if it has none).
  A family with ``samples_column_subsets = True`` also takes ``columns`` (indices) and returns
  only those perturbations' latents, ``(P, A, K)``, with the values the full draw gives them;
  the ELBO of a minibatch then samples only the perturbations its cells received, since the
  others contribute nothing to it;
* ``cell_context(dose, g)``: whatever the cells need from the globals (e.g. the latent shift
  ``D @ (M * E)``, as ``dose.apply(M * E)``), computed once per minibatch; ``dose`` is a
  ``Dosage`` (``dose.dense`` is the (n, T) matrix D);
* ``local_posterior(xn, ctx)`` and ``local_prior(ctx)``: Normals over the per-cell latent;
* ``decoder_input(u, ctx)``: what the shared ``Decoder`` reads.

A baseline without a likelihood is a ``MeanEffectModel``: it only predicts mean expression.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal

from samsbench.nn import Decoder, GaussianEncoder

NORMALIZATIONS = ("log_standardize", "standardize", "none")


class LatentModel(nn.Module):
    family: str = ""
    has_likelihood = True
    requires_one_hot = False
    samples_column_subsets = False

    def __init__(self, n_genes: int, perturbations: list[str], hp: dict):
        super().__init__()
        self.n_genes = n_genes
        self.perturbations = list(perturbations)
        self.n_perturbations = len(perturbations)
        self.hp = dict(hp)
        norm = hp.get("encoder_input_normalization", "log_standardize")
        if norm not in NORMALIZATIONS:
            raise ValueError(f"unknown encoder_input_normalization {norm!r}; use {NORMALIZATIONS}")
        self.normalization = norm
        # Set from the training split by ``set_input_statistics`` (saved with the weights).
        self.register_buffer("x_shift", torch.zeros(n_genes))
        self.register_buffer("x_inv_scale", torch.ones(n_genes))

    # -- encoder input -----------------------------------------------------------------
    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-gene mean/std (of log1p or raw counts) on the training split. A gene constant
        on the training split gets inverse scale 0, so its standardised input is 0."""
        self.x_shift.copy_(mean)
        safe = torch.where(std > 0, 1.0 / std.clamp_min(1e-30), torch.zeros_like(std))
        self.x_inv_scale.copy_(safe)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalization == "none":
            return x
        if self.normalization == "log_standardize":
            x = torch.log1p(x)
        return (x - self.x_shift) * self.x_inv_scale

    # -- protocol ----------------------------------------------------------------------
    def sample_globals(self, n_particles: int):
        return {}, None

    def cell_context(self, dose, g: dict):
        raise NotImplementedError

    def local_posterior(self, xn: torch.Tensor, ctx) -> Normal:
        raise NotImplementedError

    def local_prior(self, ctx) -> Normal:
        raise NotImplementedError

    def decoder_input(self, u: torch.Tensor, ctx) -> torch.Tensor:
        raise NotImplementedError

    def perturbation_latents(self) -> dict[str, np.ndarray]:
        """Per-perturbation summaries for figures and enrichment, each ``(T, K)``."""
        return {}


def standard_normal_like(t: torch.Tensor) -> Normal:
    return Normal(torch.zeros_like(t), torch.ones_like(t))


class ShiftModel(LatentModel):
    """The additive-shift families (SAMS-VAE, CPA-VAE): ``z = z_basal + shift`` with
    ``z_basal ~ N(0, I)`` and a per-cell ``shift = D @ (per-perturbation latent)``.

    The basal encoder reads the normalised counts and, unless ``mean_field_encoder``, the
    sampled shift (models.md §2.1); a cell's context is its shift, (P, n, K).
    """

    def build_networks(self, n_genes: int, hp: dict) -> None:
        K = self.n_latent
        self.mean_field_encoder = bool(hp.get("mean_field_encoder", False))
        n_in = n_genes + (0 if self.mean_field_encoder else K)
        self.encoder = GaussianEncoder(n_in, K, int(hp["encoder_n_hidden"]), int(hp["n_layers"]))
        self.decoder = Decoder(K, n_genes, int(hp["decoder_n_hidden"]), int(hp["n_layers"]),
                               hp.get("likelihood", "library_nb"))

    def shift(self, g: dict) -> torch.Tensor:
        """The per-perturbation latent shift, (P, T, K)."""
        raise NotImplementedError

    def cell_context(self, dose, g):
        return dose.apply(self.shift(g))

    def local_posterior(self, xn, shift):
        return self.encoder(xn) if self.mean_field_encoder else self.encoder(xn, shift)

    def local_prior(self, shift):
        return standard_normal_like(shift)

    def decoder_input(self, z_basal, shift):
        return z_basal + shift


class MeanEffectModel:
    """A baseline with no likelihood: it predicts mean log2(CP10k+1) per perturbation."""

    family: str = ""
    has_likelihood = False

    def fit(self, data) -> None:
        raise NotImplementedError

    def predict_means(self, labels: list[str]) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError
