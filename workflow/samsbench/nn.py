"""Building blocks shared by every model family (models.md §1).

The residual LeakyReLU trunk, Gaussian heads with the variance floor, the observation
likelihoods and the straight-through Gumbel-sigmoid Bernoulli. Encoders whose input is a
concatenation accept the parts separately: the product of the first layer with a
particle-independent part (the normalised counts) is computed once rather than per particle,
which gives the same numbers as the concatenated input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

LIKELIHOODS = ("library_nb", "normal", "normal_fixed_variance", "poisson")
NB_MEAN_OFFSET = 1e-4
VARIANCE_FLOOR = 1e-4


class OneHotRows:
    """Stands for the identity matrix as a trunk input part: row t is the one-hot of t, so its
    product with the first layer is just that layer's weight columns (no T x T multiply)."""

    def __init__(self, n: int):
        self.shape = (n, n)


class Trunk(nn.Module):
    """``h = LReLU(W1 x + b1)``; then ``h = LReLU(Wl h + bl) + h`` for every further layer.

    ``forward`` takes the input as a list of parts whose widths add up to ``n_in``; the parts
    may have different leading shapes (for example ``(n, G)`` and ``(P, n, K)``) and are
    broadcast after the first layer.
    """

    def __init__(self, n_in: int, n_hidden: int, n_layers: int):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.first = nn.Linear(n_in, n_hidden)
        self.rest = nn.ModuleList(nn.Linear(n_hidden, n_hidden) for _ in range(n_layers - 1))

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        h = None
        start = 0
        for i, part in enumerate(parts):
            width = part.shape[-1]
            w = self.first.weight[:, start : start + width]
            if isinstance(part, OneHotRows):
                term = w.T if i else w.T + self.first.bias
            else:
                term = F.linear(part, w, self.first.bias if i == 0 else None)
            h = term if h is None else h + term
            start += width
        if start != self.first.in_features:
            raise ValueError(f"trunk expects {self.first.in_features} inputs, got {start}")
        h = F.leaky_relu(h, 0.01)
        for layer in self.rest:
            h = F.leaky_relu(layer(h), 0.01) + h
        return h


class GaussianEncoder(nn.Module):
    """Trunk + two heads; ``Normal(mu, sqrt(exp(logvar) + 1e-4))`` (floor on the variance)."""

    def __init__(self, n_in: int, n_out: int, n_hidden: int, n_layers: int):
        super().__init__()
        self.trunk = Trunk(n_in, n_hidden, n_layers)
        self.loc = nn.Linear(n_hidden, n_out)
        self.log_var = nn.Linear(n_hidden, n_out)

    def forward(self, *parts: torch.Tensor) -> Normal:
        h = self.trunk(*parts)
        return Normal(self.loc(h), torch.sqrt(torch.exp(self.log_var(h)) + VARIANCE_FLOOR))


class Decoder(nn.Module):
    """Trunk and an observation likelihood (models.md §1.4).

    ``log_prob(h_in, x, library, x_terms)`` returns log p(x | ·) summed over genes, shape
    ``h_in.shape[:-1]``. ``x_terms`` holds the particle-independent part of the negative
    binomial (``cell_terms``), computed once per minibatch.
    """

    def __init__(self, n_in: int, n_genes: int, n_hidden: int, n_layers: int,
                 likelihood: str = "library_nb"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
        self.likelihood = likelihood
        self.trunk = Trunk(n_in, n_hidden, n_layers)
        self.head = nn.Linear(n_hidden, n_genes)
        if likelihood == "library_nb":
            self.log_theta = nn.Parameter(torch.zeros(n_genes))
        elif likelihood == "normal":
            self.log_var_head = nn.Linear(n_hidden, n_genes)
        elif likelihood == "normal_fixed_variance":
            self.log_var = nn.Parameter(torch.zeros(n_genes))

    # -- negative binomial, split into a per-cell constant and a particle-dependent part --
    def cell_terms(self, x: torch.Tensor) -> torch.Tensor | None:
        """Sum over genes of the terms of log p(x) that do not depend on the latent."""
        if self.likelihood == "library_nb":
            theta = torch.exp(self.log_theta)
            return (
                torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
                + theta * self.log_theta
            ).sum(-1)
        if self.likelihood == "poisson":
            return -torch.lgamma(x + 1).sum(-1)
        return None

    def _params(self, h_in, library):
        h = self.trunk(h_in)
        out = self.head(h)
        if self.likelihood == "library_nb":
            return library.unsqueeze(-1) * torch.softmax(out, -1) + NB_MEAN_OFFSET, torch.exp(self.log_theta)
        if self.likelihood == "poisson":
            return F.softplus(out), None
        if self.likelihood == "normal":
            return out, torch.sqrt(torch.exp(self.log_var_head(h)) + VARIANCE_FLOOR)
        return out, torch.sqrt(torch.exp(self.log_var) + VARIANCE_FLOOR)

    def log_prob(self, h_in, x, library, x_terms=None) -> torch.Tensor:
        if self.likelihood == "library_nb":
            if x_terms is None:
                x_terms = self.cell_terms(x)
            logits = self.head(self.trunk(h_in))
            return LibraryNBLogLik.apply(logits, x, library, self.log_theta) + x_terms
        a, b = self._params(h_in, library)
        if self.likelihood == "poisson":
            if x_terms is None:
                x_terms = self.cell_terms(x)
            return (x * torch.log(a) - a).sum(-1) + x_terms
        return Normal(a, b).log_prob(x).sum(-1)

    @torch.no_grad()
    def sample(self, h_in, library) -> torch.Tensor:
        a, b = self._params(h_in, library)
        if self.likelihood == "library_nb":
            m, theta = a, b
            rate = torch.distributions.Gamma(theta.expand_as(m), theta / m).sample()
            return torch.poisson(rate)
        if self.likelihood == "poisson":
            return torch.poisson(a)
        return Normal(a, b).sample()


class LibraryNBLogLik(torch.autograd.Function):
    """Particle-dependent part of the library-size negative binomial, from decoder logits:
    ``sum_g x ln m - (theta + x) ln(theta + m)`` with ``m = library * softmax(logits) + 1e-4``.

    Forward and backward are written out so the step makes a few passes over the
    (particles x cells x genes) tensors instead of the many of the op-by-op graph; a test checks
    values and gradients against the direct formula.
    """

    @staticmethod
    def forward(ctx, logits, x, library, log_theta):
        rho = torch.softmax(logits, -1)
        lib = library.unsqueeze(-1)
        m = lib * rho + NB_MEAN_OFFSET
        theta = torch.exp(log_theta)
        theta_m = theta + m
        theta_x = theta + x
        log_theta_m = torch.log(theta_m)
        out = (x * torch.log(m) - theta_x * log_theta_m).sum(-1)
        ctx.save_for_backward(rho, m, theta_m, log_theta_m, x, lib, theta)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rho, m, theta_m, log_theta_m, x, lib, theta = ctx.saved_tensors
        g = grad_out.unsqueeze(-1)
        ratio = (theta + x) / theta_m
        d_m = x / m - ratio  # d out / d m
        # softmax: d/dl_j = lib * rho_j * (d_m_j - sum_g rho_g d_m_g)
        weighted = rho * d_m
        grad_logits = g * lib * (weighted - rho * weighted.sum(-1, keepdim=True))
        # d out / d theta = -ln(theta + m) - (theta + x) / (theta + m); chain rule through exp
        d_theta = (g * (-log_theta_m - ratio)).reshape(-1, theta.shape[-1]).sum(0)
        return grad_logits, None, None, d_theta * theta


def nb_log_prob_direct(x, mean, theta):
    """The reference's formula, term by term (used by tests to check ``Decoder.log_prob``)."""
    return (
        torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
        + theta * torch.log(theta / (theta + mean)) + x * torch.log(mean / (theta + mean))
    )


_EPS = torch.finfo(torch.float32).eps
_TINY = torch.finfo(torch.float32).tiny


def st_bernoulli_sample(logits: torch.Tensor, shape: tuple = ()) -> torch.Tensor:
    """Straight-through Gumbel-sigmoid sample (temperature 1): hard 0/1 forward values with
    P(1) = sigmoid(logits) exactly; the backward pass goes through the relaxed sample."""
    p = torch.sigmoid(logits).clamp(_EPS, 1 - _EPS)
    u = torch.rand(tuple(shape) + logits.shape, dtype=logits.dtype, device=logits.device)
    u = u.clamp(_EPS, 1 - _EPS)
    y = torch.log(u) - torch.log1p(-u) + torch.log(p) - torch.log1p(-p)
    soft = torch.sigmoid(y).clamp(_TINY, 1 - _EPS).clamp(_EPS, 1 - _EPS)
    return soft + (torch.round(soft) - soft).detach()


def bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Exact Bernoulli log-mass of the (hard) value, with probabilities clamped as the reference."""
    p = torch.sigmoid(logits).clamp(_EPS, 1 - _EPS)
    clamped_logits, value = torch.broadcast_tensors(torch.log(p) - torch.log1p(-p), value)
    return -F.binary_cross_entropy_with_logits(clamped_logits, value, reduction="none")


def bernoulli_kl(logits: torch.Tensor, prior_logit: float) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(logits)) || Bernoulli(sigmoid(prior_logit))), elementwise."""
    q = torch.sigmoid(logits)
    log_q, log_1mq = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_p = F.logsigmoid(torch.tensor(prior_logit))
    log_1mp = F.logsigmoid(torch.tensor(-prior_logit))
    return q * (log_q - log_p) + (1 - q) * (log_1mq - log_1mp)


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)
