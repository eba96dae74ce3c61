"""Exact maths of the building blocks on small hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from samsbench.nn import (Decoder, GaussianEncoder, Trunk, bernoulli_log_prob,
                          nb_log_prob_direct, st_bernoulli_sample)


def test_nb_log_prob_hand_computed():
    # x = 2, mean m = 1, theta = 1: NB(r=1, p) is geometric with P(x) = (1/2)^(x+1) = 1/8.
    value = nb_log_prob_direct(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(1.0))
    assert value.item() == pytest.approx(math.log(1 / 8), abs=1e-6)
    # x = 0, m = 3, theta = 2: (theta / (theta + m))^theta = (2/5)^2.
    value = nb_log_prob_direct(torch.tensor(0.0), torch.tensor(3.0), torch.tensor(2.0))
    assert value.item() == pytest.approx(2 * math.log(0.4), abs=1e-6)


def test_decoder_nb_split_equals_direct_formula():
    torch.manual_seed(0)
    decoder = Decoder(4, 6, 8, 2, "library_nb")
    with torch.no_grad():
        decoder.log_theta.copy_(torch.randn(6))
    h = torch.randn(3, 5, 4)  # particles x cells x latent
    x = torch.poisson(torch.full((5, 6), 7.0))
    library = x.sum(-1)
    ours = decoder.log_prob(h, x, library, decoder.cell_terms(x))
    rho = torch.softmax(decoder.head(decoder.trunk(h)), -1)
    mean = library[:, None] * rho + 1e-4
    theta = torch.exp(decoder.log_theta)
    direct = nb_log_prob_direct(x, mean, theta).sum(-1)
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-3)
    # and against torch's own negative binomial (logits = ln m - ln theta)
    nb = torch.distributions.NegativeBinomial(total_count=theta, logits=torch.log(mean) - torch.log(theta))
    torch.testing.assert_close(ours, nb.log_prob(x).sum(-1), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("largest", [40.0, 500.0])  # within the table; past it
def test_nb_count_terms_by_table_equal_direct_formula(largest):
    from samsbench.nn import NBCountTerms, nb_count_terms_direct, whole_counts

    torch.manual_seed(2)
    x = torch.poisson(torch.rand(6, 9) * 20) * (torch.rand(6, 9) < 0.6)
    x[0, 0], x[1, 3] = largest, largest - 1
    log_theta = torch.randn(9, requires_grad=True)
    weights = torch.randn(6)
    table = NBCountTerms.apply(x, whole_counts(x), log_theta)
    (table * weights).sum().backward()
    grad, log_theta.grad = log_theta.grad, None
    direct = nb_count_terms_direct(x, log_theta)
    (direct * weights).sum().backward()
    torch.testing.assert_close(table, direct)
    torch.testing.assert_close(grad, log_theta.grad)
    # by hand, x = 2, theta = 2: ln 3! - ln 1! - ln 2! + 2 ln 2 = ln 12
    one = NBCountTerms.apply(torch.tensor([[2.0]]), torch.tensor([[2]]), torch.tensor([math.log(2)]))
    assert one.item() == pytest.approx(math.log(12), abs=1e-5)


def test_count_terms_take_the_direct_formula_for_non_counts():
    from samsbench.nn import nb_count_terms_direct, whole_counts

    assert whole_counts(torch.tensor([[1.0, 2.5]])) is None
    assert whole_counts(torch.tensor([[1.0, -1.0]])) is None
    decoder = Decoder(2, 2, 4, 1, "library_nb")
    x = torch.tensor([[1.0, 2.5], [0.0, 3.25]])
    torch.testing.assert_close(decoder.cell_terms(x), nb_count_terms_direct(x, decoder.log_theta))


def test_trunk_is_residual_leaky_relu_and_parts_equal_concatenation():
    torch.manual_seed(1)
    trunk = Trunk(5, 4, 3)
    x = torch.randn(7, 5)
    h = torch.nn.functional.leaky_relu(trunk.first(x), 0.01)
    for layer in trunk.rest:
        h = torch.nn.functional.leaky_relu(layer(h), 0.01) + h
    torch.testing.assert_close(trunk(x), h)
    # Split input: a (n, 3) part shared over particles and a (P, n, 2) part.
    a, b = torch.randn(7, 3), torch.randn(2, 7, 2)
    joined = torch.cat([a.expand(2, -1, -1), b], -1)
    torch.testing.assert_close(trunk(a, b), trunk(joined), rtol=1e-5, atol=1e-6)


def test_gaussian_head_variance_floor():
    enc = GaussianEncoder(3, 2, 4, 1)
    with torch.no_grad():
        enc.log_var.weight.zero_()
        enc.log_var.bias.fill_(-50.0)  # exp(-50) ~ 0: the floor 1e-4 on the variance remains
    q = enc(torch.randn(5, 3))
    torch.testing.assert_close(q.scale, torch.full((5, 2), 0.01), rtol=1e-4, atol=1e-7)


def test_straight_through_mask_is_hard_with_sigmoid_frequency_and_passes_gradient():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5], requires_grad=True)
    sample = st_bernoulli_sample(logits, (20000,))
    assert set(torch.unique(sample.detach()).tolist()) <= {0.0, 1.0}
    freq = sample.detach().mean(0).numpy()
    np.testing.assert_allclose(freq, torch.sigmoid(logits).detach().numpy(), atol=0.015)
    sample.sum().backward()
    assert logits.grad is not None and torch.all(logits.grad != 0)


def test_bernoulli_log_prob_is_exact_mass():
    logits = torch.tensor([0.0, math.log(3.0)])  # p = 0.5 and p = 0.75
    value = torch.tensor([1.0, 0.0])
    expected = torch.tensor([math.log(0.5), math.log(0.25)])
    torch.testing.assert_close(bernoulli_log_prob(logits, value), expected)


@pytest.mark.parametrize("n_genes", [5, 16])  # padded to 16 inside, and not padded
def test_fused_nb_head_gradients_equal_the_direct_formula(n_genes):
    from samsbench.nn import LibraryNBHead

    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, 4, **f64)  # particles x cells x hidden
    weight, bias = torch.randn(n_genes, 4, **f64), torch.randn(n_genes, **f64)
    log_theta = torch.randn(n_genes, **f64)
    x = torch.poisson(torch.full((3, n_genes), 4.0, dtype=torch.float64))
    library = x.sum(-1) + 1
    inputs = (h, weight, bias, x, library, log_theta)
    assert torch.autograd.gradcheck(LibraryNBHead.apply, inputs)
    weights = torch.randn(2, 3, dtype=torch.float64)
    (LibraryNBHead.apply(*inputs) * weights).sum().backward()
    leaves = (h, weight, bias, log_theta)
    fused = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    theta = torch.exp(log_theta)
    mean = library[:, None] * torch.softmax(h @ weight.T + bias, -1) + 1e-4
    direct = (x * torch.log(mean) - (theta + x) * torch.log(theta + mean)).sum(-1)
    torch.testing.assert_close(LibraryNBHead.apply(*inputs), direct)
    (direct * weights).sum().backward()
    torch.testing.assert_close(fused, [t.grad for t in leaves])


def test_dosage_gather_equals_dense_product():
    from samsbench.data.tensors import Dosage

    codes = torch.tensor([[0, 2], [3, 3], [1, 3]])  # T = 3; 3 is the padding column
    dose = Dosage(codes, 3)
    np.testing.assert_array_equal(dose.dense.numpy(), [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    A = torch.randn(4, 3, 2)
    torch.testing.assert_close(dose.apply(A), dose.dense @ A)
    r = torch.randn(4, 3)
    torch.testing.assert_close(dose.charge(r), r @ dose.dense.T)


def test_dosage_restricted_to_present_columns_gives_the_same_cell_values():
    from samsbench.data.tensors import Dosage

    codes = torch.tensor([[4, 1], [5, 5], [1, 5], [2, 4]])  # T = 5; 5 is the padding column
    dose = Dosage(codes, 5)
    columns = dose.present_columns()
    np.testing.assert_array_equal(columns.numpy(), [1, 2, 4])
    sub = dose.restrict(columns)
    A, r = torch.randn(2, 5, 3), torch.randn(2, 5)
    torch.testing.assert_close(sub.apply(A[:, columns]), dose.apply(A))
    torch.testing.assert_close(sub.charge(r[:, columns]), dose.charge(r))
    np.testing.assert_array_equal(sub.dense.numpy(), dose.dense[:, columns].numpy())


def test_analytic_bernoulli_kl_matches_expectation_of_sampled_term():
    from samsbench.nn import bernoulli_kl

    logits = torch.tensor([-1.0, 0.3, 2.0])
    prior = math.log(0.1 / 0.9)
    q = torch.sigmoid(logits)
    exact = q * torch.log(q / 0.1) + (1 - q) * torch.log((1 - q) / 0.9)
    torch.testing.assert_close(bernoulli_kl(logits, prior), exact)
    torch.manual_seed(0)
    m = st_bernoulli_sample(logits, (200000,)).detach()
    mc = -(bernoulli_log_prob(torch.tensor(prior), m) - bernoulli_log_prob(logits, m)).mean(0)
    np.testing.assert_allclose(mc.numpy(), exact.numpy(), atol=0.01)


def test_varimax_recovers_the_axes_of_a_rotated_sparse_matrix():
    from samsbench.models.sams_vae import varimax

    torch.manual_seed(0)
    sparse = torch.zeros(40, 4, dtype=torch.float64)
    for t in range(40):  # one active axis per row: varimax's optimum is exactly these axes
        sparse[t, t % 4] = (3.0 + torch.rand(1, dtype=torch.float64)) * (-1) ** t
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    R = varimax(sparse @ Q)
    torch.testing.assert_close(R.T @ R, torch.eye(4, dtype=torch.float64))
    # Q R undoes the rotation up to a signed permutation of the axes
    undo = (Q @ R).abs()
    torch.testing.assert_close(undo.max(1).values, torch.ones(4, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(undo.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family,mean_field_encoder", [("sams_vae", False), ("sams_vae_mean_field", True)])
def test_align_basis_rotates_the_latent_space_exactly(family, mean_field_encoder):
    from helpers import for_family
    from samsbench import models as registry

    torch.manual_seed(0)
    hp = dict(n_latent=3, n_layers=1, encoder_n_hidden=8, decoder_n_hidden=8,
              embedding_encoder_n_layers=1, embedding_encoder_n_hidden=8, mask_prior_prob=0.1,
              mean_field_encoder=mean_field_encoder)
    model = registry.build(family, 6, ["A", "B", "C", "D"], for_family(family, hp))
    with torch.no_grad():
        model.mask_logits.normal_(0, 2)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z, xn, shift = torch.randn(5, 3), torch.randn(5, 6), torch.randn(5, 3)
    before_dec = model.decoder.trunk(z)
    before_loc = model.local_posterior(xn, shift).loc
    R = model.align_basis()
    torch.testing.assert_close(R.T @ R, torch.eye(3), atol=1e-5, rtol=0)
    # the decoder reads the rotated coordinates z' = R^T z ...
    torch.testing.assert_close(model.decoder.trunk(z @ R), before_dec, atol=1e-5, rtol=1e-5)
    # ... and the encoder writes them (its shift input rotated too)
    after_loc = model.local_posterior(xn, shift @ R).loc
    torch.testing.assert_close(after_loc, before_loc @ R, atol=1e-5, rtol=1e-5)
    q = torch.sigmoid(model.mask_logits)
    assert torch.all(((q - 0.5).abs() < 1e-6) | ((q - 0.1).abs() < 1e-6))
