"""The protocol every model family follows, so one engine (inference.py) serves them all.

Every family has the same constructor, ``Family(n_genes, perturbations, hparams)``, where
``hparams`` is an instance of its ``Hyperparameters`` dataclass (a mapping is parsed strictly),
and declares what the engine asks about:

* ``trains_by_gradient``: the engine runs its gradient loop (``LatentModel``) or calls
  ``fit(data)`` once (``MeanEffectModel``);
* ``has_likelihood``: held-out IWELBO is scored, and predictions are sampled from the model
  rather than read from ``predict_means``.

A family with a likelihood is a ``LatentModel``. Per training step the engine asks it for:

* ``sample_globals(P)``: P joint samples of the per-perturbation latents from the guide (a
  dict with the keys ``global_variables``), and their ``log p - log q`` summed over latent
  dims, shape ``(P, T)`` (None if it has none). A family with ``samples_column_subsets = True``
  also takes ``columns`` (indices) and returns only those perturbations' latents, ``(P, A, K)``,
  with the values the full draw gives them; the ELBO of a minibatch then samples only the
  perturbations its cells received, since the others contribute nothing to it;
* ``cell_context(dose, g)``: whatever the cells need from the globals (e.g. the latent shift
  ``D @ (M * E)``, as ``dose.apply(M * E)``), computed once per minibatch; ``dose`` is a
  ``Dosage`` (``dose.dense`` is the (n, T) matrix D);
* ``local_posterior(xn, ctx)`` and ``local_prior(ctx)``: Normals over the per-cell latent;
* ``decoder_input(u, ctx)``: what the shared ``Decoder`` reads;
* ``global_parameters()``: the parameters of the per-perturbation guide (their learning rate
  is scaled by ``global_lr_multiplier``);
* ``after_step(step, max_steps)``: a hook after each optimiser step; True when the model
  re-parameterised itself (the engine then restarts its optimiser and best-checkpoint search).

A baseline without a likelihood is a ``MeanEffectModel``: it only predicts mean expression.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal

from samsbench.models.hparams import Hyperparameters, parse
from samsbench.nn import Decoder, GaussianEncoder


@dataclasses.dataclass(frozen=True)
class LatentHyperparameters(Hyperparameters):
    """Every family with a likelihood: latent size, networks, likelihood, encoder input."""

    n_latent: int = 100
    n_layers: int = 1
    encoder_n_hidden: int = 400
    decoder_n_hidden: int = 400
    likelihood: Literal["library_nb", "normal", "normal_fixed_variance", "poisson"] = "library_nb"
    encoder_input_normalization: Literal["log_standardize", "standardize",
                                         "none"] = "log_standardize"


NORMALIZATIONS = typing.get_args(typing.get_type_hints(LatentHyperparameters)
                                 ["encoder_input_normalization"])


def family_hyperparameters(cls: type, hparams) -> Hyperparameters:
    """``hparams`` as ``cls.Hyperparameters`` (a mapping is parsed strictly)."""
    return parse(cls.Hyperparameters, hparams, cls.family or cls.__name__)


class LatentModel(nn.Module):
    family: str = ""
    Hyperparameters: type = LatentHyperparameters
    # What the report, figures and normalised scores know of a family (models.card): its role
    # ("model", "baseline" or "ceiling"), display label and colour, masks and likelihood.
    role = "model"
    label = ""  # the family name when empty
    colour = ""  # a stable extra colour when empty
    has_masks = False
    trains_by_gradient = True
    has_likelihood = True
    global_variables: tuple[str, ...] = ()  # the keys of ``sample_globals``' dict
    requires_one_hot = False
    samples_column_subsets = False

    def __init__(self, n_genes: int, perturbations: Sequence[str], hparams):
        super().__init__()
        self.hparams = family_hyperparameters(type(self), hparams)
        self.n_genes = n_genes
        self.perturbations = list(perturbations)
        self.n_perturbations = len(perturbations)
        self.n_latent = self.hparams.n_latent
        self.normalization = self.hparams.encoder_input_normalization
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

    def global_parameters(self) -> list[nn.Parameter]:
        return []

    def after_step(self, step: int, max_steps: int) -> bool:
        return False

    def decoder_for(self, n_in: int) -> Decoder:
        """The shared decoder with this family's width, depth and likelihood."""
        hp = self.hparams
        return Decoder(n_in, self.n_genes, hp.decoder_n_hidden, hp.n_layers, hp.likelihood)


def standard_normal_like(t: torch.Tensor) -> Normal:
    return Normal(torch.zeros_like(t), torch.ones_like(t))


@dataclasses.dataclass(frozen=True)
class ShiftHyperparameters(LatentHyperparameters):
    """``embedding_prior_scale``: std of the Normal prior of the per-perturbation embedding;
    ``mean_field_encoder``: the basal encoder reads the counts only, not the sampled shift."""

    embedding_prior_scale: float = 1.0
    mean_field_encoder: bool = False


@dataclasses.dataclass(frozen=True)
class FreeEmbeddingHyperparameters(ShiftHyperparameters):
    """A free mean-field guide q(E) = N(loc, scale): loc starts at this scale times N(0, 1)
    (0: at zero), scale at ``embedding_scale_init``."""

    embedding_loc_init_scale: float = 0.0
    embedding_scale_init: float = 1.0


class ShiftModel(LatentModel):
    """The additive-shift families (SAMS-VAE, CPA-VAE): ``z = z_basal + shift`` with
    ``z_basal ~ N(0, I)`` and a per-cell ``shift = D @ (per-perturbation latent)``.

    The basal encoder reads the normalised counts and, unless ``mean_field_encoder``, the
    sampled shift (as in SAMS-VAE); a cell's context is its shift, (P, n, K).
    """

    Hyperparameters = ShiftHyperparameters

    def build_networks(self) -> None:
        hp, K = self.hparams, self.n_latent
        self.mean_field_encoder = hp.mean_field_encoder
        n_in = self.n_genes + (0 if self.mean_field_encoder else K)
        self.encoder = GaussianEncoder(n_in, K, hp.encoder_n_hidden, hp.n_layers)
        self.decoder = self.decoder_for(K)

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
    """A baseline with no likelihood: it predicts mean log2(CP10k+1) per perturbation.

    A subclass implements ``fit(data)`` (once, on the training split), ``predict_means(labels)``
    and ``state()`` / ``load_state(state)`` (a dict of arrays, or of dicts of arrays). The
    methods below let the engine save, load and move it like a ``LatentModel``.
    """

    family: str = ""
    Hyperparameters: type = Hyperparameters
    role = "baseline"  # a simple baseline: the normalised scores' 0 is the best of them
    label = ""
    colour = ""
    has_masks = False
    trains_by_gradient = False
    has_likelihood = False
    global_variables: tuple[str, ...] = ()

    def __init__(self, n_genes: int, perturbations: Sequence[str], hparams=None):
        self.hparams = family_hyperparameters(type(self), hparams)
        self.n_genes = n_genes
        self.perturbations = list(perturbations)

    def fit(self, data) -> None:
        raise NotImplementedError

    def predict_means(self, labels: list[str]) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError

    def perturbation_latents(self) -> dict[str, np.ndarray]:
        return {}

    # -- what the engine calls, as on an nn.Module --------------------------------------
    def state_dict(self) -> dict:
        return _map_leaves(self.state(), lambda v: torch.as_tensor(np.asarray(v)))

    def load_state_dict(self, state: dict) -> None:
        self.load_state(_map_leaves(state, lambda v: v.cpu().numpy()))

    def to(self, device):
        return self

    def eval(self):
        return self


def _map_leaves(value, fn):
    if isinstance(value, Mapping):
        return {k: _map_leaves(v, fn) for k, v in value.items()}
    return fn(value)
