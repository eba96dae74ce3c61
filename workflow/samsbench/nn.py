"""Building blocks shared by every model family (the reference's encoders, decoders and likelihoods).

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
    product with the first layer is just that layer's weight columns (no T x T multiply).
    ``rows`` (indices) keeps only those rows of the identity."""

    def __init__(self, n: int, rows: torch.Tensor | None = None):
        self.rows = rows
        self.shape = (n if rows is None else len(rows), n)


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
                term = w.T if part.rows is None else w.T[part.rows]
                term = term if i else term + self.first.bias
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
    """Trunk and an observation likelihood.

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
            if not host_reads_free(x):  # the lookup table checks counts: three syncs a step
                return nb_count_terms_direct(x, self.log_theta)
            counts = whole_counts(x)
            if counts is None:
                return nb_count_terms_direct(x, self.log_theta)
            return NBCountTerms.apply(x, counts, self.log_theta)
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
            h = self.trunk(h_in)
            return LibraryNBHead.apply(h, self.head.weight, self.head.bias, x, library,
                                       self.log_theta) + x_terms
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


def _padded_width(n: int) -> int:
    # On this CPU (one thread) the 2560 x 400 x G products ran 1.4-1.8x faster with G a multiple
    # of 16 (1,187 genes -> 1,200); the padding columns are sliced off and never reach the result.
    return -(-n // 16) * 16


class LibraryNBHead(torch.autograd.Function):
    """The decoder's output layer and the particle-dependent part of the library-size negative
    binomial, fused: ``sum_g x ln m - (theta + x) ln(theta + m)`` with
    ``m = library * softmax(h W^T + b) + 1e-4``.

    Forward and backward are written out so the step makes a few passes over the
    (particles x cells x genes) tensors instead of the many of the op-by-op graph, and the
    output layer's matrix products run on a gene axis padded to a multiple of 16 (padding
    logits are -inf, so the softmax and every gradient are unchanged). A test checks values
    and gradients against the direct formula.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, x, library, log_theta):
        n_genes, width = weight.shape
        padded = _padded_width(n_genes)
        if padded != n_genes:
            weight = torch.cat([weight, weight.new_zeros(padded - n_genes, width)])
            bias = torch.cat([bias, bias.new_full((padded - n_genes,), float("-inf"))])
        lead = h.shape[:-1]
        h2 = h.reshape(-1, width)
        rho_padded = torch.softmax(torch.addmm(bias, h2, weight.T), -1)
        rho = rho_padded.view(*lead, padded)[..., :n_genes]
        lib = library.unsqueeze(-1)
        m = torch.addcmul(rho.new_full((), NB_MEAN_OFFSET), rho, lib)
        theta = torch.exp(log_theta)
        theta_m = m + theta
        log_theta_m = torch.log(theta_m)
        theta_x = x + theta
        out = torch.log(m).mul_(x).addcmul_(log_theta_m, theta_x, value=-1).sum(-1)
        ctx.save_for_backward(h2, weight, rho, m, theta_m, log_theta_m, theta_x, x, lib, theta)
        ctx.n_genes = n_genes
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h2, weight, rho, m, theta_m, log_theta_m, theta_x, x, lib, theta = ctx.saved_tensors
        n_genes = ctx.n_genes
        g = grad_out.unsqueeze(-1)
        ratio = theta_x / theta_m
        # d out / d m = x / m - (theta + x) / (theta + m); softmax chain rule:
        # d/dl_j = lib * rho_j * (d_m_j - sum_g rho_g d_m_g)
        weighted = torch.div(x, m).sub_(ratio).mul_(rho)
        total = weighted.sum(-1, keepdim=True)
        if torch.compiler.is_compiling():  # no out= into a strided view under torch.compile
            grad_real = torch.addcmul(weighted, rho, total, value=-1).mul_(g * lib)
            grad_logits = F.pad(grad_real, (0, weight.shape[0] - n_genes)).reshape(
                h2.shape[0], weight.shape[0])
        else:  # eager: written in place into the padded buffer, one pass fewer
            grad_logits = h2.new_empty(h2.shape[0], weight.shape[0])
            grad_logits[:, n_genes:].zero_()
            grad_view = grad_logits.view(*rho.shape[:-1], weight.shape[0])[..., :n_genes]
            torch.addcmul(weighted, rho, total, value=-1, out=grad_view)
            grad_view.mul_(g * lib)
        grad_h = (grad_logits @ weight).view(*rho.shape[:-1], h2.shape[-1])
        grad_weight = (grad_logits.T @ h2)[:n_genes]
        grad_bias = grad_logits.sum(0)[:n_genes]
        # d out / d theta = -ln(theta + m) - (theta + x) / (theta + m), summed over particles and
        # cells with the incoming weights (two matrix-vector products); chain rule through exp
        g_row = grad_out.reshape(1, -1)
        d_theta = -(g_row @ log_theta_m.reshape(-1, n_genes) + g_row @ ratio.reshape(-1, n_genes))
        return grad_h, grad_weight, grad_bias, None, None, d_theta.reshape(-1) * theta


def nb_count_terms_direct(x: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """``sum_g lgamma(x + theta) - lgamma(theta) - lgamma(x + 1) + theta ln theta``: the terms
    of the negative binomial's log-mass that do not depend on its mean, per cell."""
    theta = torch.exp(log_theta)
    return (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
            + theta * log_theta).sum(-1)


def host_reads_free(t: torch.Tensor) -> bool:
    """Whether reading a value of ``t`` back to Python (``.item()``, a data-dependent shape) is
    free. On a GPU it waits for every queued kernel, so the training step avoids it there; a
    compiled step (``training.compile``) cannot make one without breaking its graph."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def whole_counts(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as int64 if every entry is a non-negative whole number, else None."""
    counts = x.to(torch.int64)
    if counts.numel() and (int(counts.min()) < 0 or not torch.equal(counts.to(x.dtype), x)):
        return None
    return counts


class NBCountTerms(torch.autograd.Function):
    """``nb_count_terms_direct`` for whole-number counts, by table lookup.

    lgamma and digamma are scalar loops on CPU (~7 and ~14 ns per value, against ~0.7 ns for a
    log), and evaluating them at every (cell, gene) of a minibatch took about a tenth of a
    training step. A count takes few values per gene, so the terms and their derivatives are
    tabulated per (count, gene) for counts below ``TABLE_COUNTS`` and gathered; larger counts
    are computed directly. A test checks values and gradients against the direct formula.
    """

    TABLE_COUNTS = 64

    @staticmethod
    def forward(ctx, x, counts, log_theta):
        top = int(counts.max()) + 1 if counts.numel() else 1
        large = None
        if top > NBCountTerms.TABLE_COUNTS:
            top = NBCountTerms.TABLE_COUNTS
            large = counts >= top
            counts = counts.clamp(max=top - 1)
        theta = torch.exp(log_theta)
        v = torch.arange(top, dtype=x.dtype, device=x.device).unsqueeze(-1)
        table = (torch.lgamma(v + theta) - torch.lgamma(theta) - torch.lgamma(v + 1)
                 + theta * log_theta)  # (top, genes)
        values = _gather_rows(table, counts)
        if large is not None:  # the exact terms where a count is past the table
            values[large] = nb_count_terms_entries(x, large, log_theta)
        ctx.save_for_backward(x, counts, log_theta, large)
        ctx.top = top
        return values.sum(-1)

    @staticmethod
    def backward(ctx, grad_out):
        x, counts, log_theta, large = ctx.saved_tensors
        theta = torch.exp(log_theta)
        v = torch.arange(ctx.top, dtype=x.dtype, device=x.device).unsqueeze(-1)
        # d/d ln theta of lgamma(x + theta) - lgamma(theta) + theta ln theta
        table = theta * (torch.digamma(v + theta) - torch.digamma(theta) + log_theta + 1)
        per_entry = _gather_rows(table, counts)
        if large is not None:
            per_entry[large] = nb_count_terms_entries(x, large, log_theta, derivative=True)
        grad = grad_out.reshape(1, -1) @ per_entry.reshape(-1, per_entry.shape[-1])
        return None, None, grad.reshape(-1)


def _gather_rows(table: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``table[counts[..., g], g]`` for every entry."""
    flat = counts.reshape(-1, counts.shape[-1])
    return table.gather(0, flat).view(counts.shape)


def nb_count_terms_entries(x, where, log_theta, derivative: bool = False) -> torch.Tensor:
    """The terms of ``nb_count_terms_direct`` (or their derivative in ln theta) at the entries
    ``x[where]``, not summed over genes."""
    genes = where.nonzero()[:, -1]
    xs, lt = x[where], log_theta[genes]
    theta = torch.exp(lt)
    if derivative:
        return theta * (torch.digamma(xs + theta) - torch.digamma(theta) + lt + 1)
    return torch.lgamma(xs + theta) - torch.lgamma(theta) - torch.lgamma(xs + 1) + theta * lt


def nb_log_prob_direct(x, mean, theta):
    """The reference's formula, term by term (used by tests to check ``Decoder.log_prob``)."""
    return (
        torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
        + theta * torch.log(theta / (theta + mean)) + x * torch.log(mean / (theta + mean))
    )


_EPS = torch.finfo(torch.float32).eps
_TINY = torch.finfo(torch.float32).tiny


def rows_of(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``t[..., rows, :]``, or ``t`` itself when rows is None (per-perturbation rows)."""
    return t if rows is None else t[..., rows, :]


def st_bernoulli_sample(logits: torch.Tensor, shape: tuple = (),
                        noise: torch.Tensor | None = None) -> torch.Tensor:
    """Straight-through Gumbel-sigmoid sample (temperature 1): hard 0/1 forward values with
    P(1) = sigmoid(logits) exactly; the backward pass goes through the relaxed sample.
    ``noise``: the uniform draws to use, of shape ``shape + logits.shape`` (drawn if None)."""
    p = torch.sigmoid(logits).clamp(_EPS, 1 - _EPS)
    u = noise if noise is not None else torch.rand(
        tuple(shape) + logits.shape, dtype=logits.dtype, device=logits.device)
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
    """KL(Bernoulli(sigmoid(logits)) || Bernoulli(sigmoid(prior_logit))), elementwise. The
    prior's log-probabilities are Python floats: no tensor off the logits' device."""
    q = torch.sigmoid(logits)
    log_q, log_1mq = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_p, log_1mp = log_sigmoid(prior_logit), log_sigmoid(-prior_logit)
    return q * (log_q - log_p) + (1 - q) * (log_1mq - log_1mp)


def log_sigmoid(v: float) -> float:
    """ln sigmoid(v) of a Python float, without overflow."""
    return -math.log1p(math.exp(-v)) if v >= 0 else v - math.log1p(math.exp(v))


def normal_log_prob(x: torch.Tensor, scale: float) -> torch.Tensor:
    """log N(x; 0, scale^2) elementwise, as ``Normal(0.0, scale).log_prob(x)`` computes it
    but with the constants as Python floats (that Normal holds CPU tensors, which a GPU step
    would mix with its own)."""
    return -(x * x) / (2 * scale * scale) - math.log(scale) - 0.5 * math.log(2 * math.pi)


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def log2_cp10k(x: torch.Tensor) -> torch.Tensor:
    """log2(10,000 x / total + 1) per row of counts, in torch (the unit of every ATE; the
    numpy twin for files is ``samsbench.metrics.log_cp10k``); a zero-total row stays zero."""
    return torch.log2(1e4 * x / x.sum(-1, keepdim=True).clamp_min(1e-12) + 1)
