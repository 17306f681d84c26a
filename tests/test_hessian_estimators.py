"""The diagonal-curvature estimators of optimizers.book.hessian against exact diagonals.

Exact references: the full Hessian of softmax regression from optimizers.book.newton
(written independently, for Newton's method), torch's autograd Hessian and Jacobian
of a small MLP. Unbiasedness is checked with many seeded samples: every coordinate's
sample mean within a few standard errors of the exact value, and the same test
rejecting the quantity the estimator does *not* estimate (so it can fail).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizers.book import hessian as hs
from optimizers.book.newton import softmax_regression
from optimizers.book.problems import digits

N_BATCH = 128


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def softmax_problem():
    """Softmax regression on a batch of digits, at a random (not optimal) point."""
    X_train, y_train, _, _ = digits()
    X = np.hstack([X_train[:N_BATCH], np.ones((N_BATCH, 1))])
    y = y_train[:N_BATCH]
    W = 0.1 * np.random.default_rng(0).standard_normal((X.shape[1], 10))
    H = softmax_regression(X_train[:N_BATCH], y, weight_decay=0.0).hessian(W.ravel())
    return X, y, W, H


@pytest.fixture(scope="module")
def mlp_problem():
    X_train, y_train, _, _ = digits()
    X, y = torch.tensor(X_train[:48]), torch.tensor(y_train[:48])
    sizes = (64, 6, 10)
    theta = hs.mlp_init(sizes, seed=0)

    def logits(t):
        return hs.mlp_logits(t, X, sizes)

    def loss(t):
        return hs.mean_cross_entropy(logits(t), y)

    return theta, logits, loss, y


def z_scores(samples, exact):
    """(sample mean - exact) / standard error, per coordinate with a nonzero spread."""
    samples = np.asarray(samples).reshape(len(samples), -1)
    exact = np.asarray(exact).ravel()
    se = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    keep = se > 0
    return (samples.mean(axis=0)[keep] - exact[keep]) / se[keep]


# --------------------------------------------------------------------------- #
# Exact quantities                                                             #
# --------------------------------------------------------------------------- #


def test_closed_form_diagonal_and_hvp_match_the_full_hessian(softmax_problem):
    X, _, W, H = softmax_problem
    np.testing.assert_allclose(hs.softmax_regression_hessian_diagonal(X, W).ravel(), np.diag(H), rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(1)
    U = rng.standard_normal((3, *W.shape))
    for u, hu in zip(U, hs.softmax_regression_hvp(X, W, U)):  # batched products
        np.testing.assert_allclose(hu.ravel(), H @ u.ravel(), rtol=1e-10, atol=1e-13)


def test_numpy_gradient_matches_autograd(softmax_problem):
    X, y, W, _ = softmax_problem
    w = torch.tensor(W, requires_grad=True)
    torch.nn.functional.cross_entropy(torch.tensor(X) @ w, torch.tensor(y)).backward()
    np.testing.assert_allclose(hs.softmax_regression_grad(X, W, y), w.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_torch_exact_diagonals_on_softmax_regression(softmax_problem):
    """A linear model: the Gauss-Newton matrix is the Hessian, and autograd agrees with the closed form."""
    X, y, W, H = softmax_problem
    Xt, yt = torch.tensor(X), torch.tensor(y)
    d, K = W.shape
    theta = torch.tensor(W.ravel())

    def logits(t):
        return Xt @ t.reshape(d, K)

    h_diag = hs.hessian_diagonal_exact(lambda t: hs.mean_cross_entropy(logits(t), yt), theta)
    g_diag = hs.gauss_newton_diagonal_exact(logits, theta)
    np.testing.assert_allclose(h_diag.numpy(), np.diag(H), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g_diag.numpy(), np.diag(H), rtol=1e-10, atol=1e-14)


def test_on_an_mlp_gauss_newton_is_not_the_hessian(mlp_problem):
    theta, logits, loss, _ = mlp_problem
    h_diag = hs.hessian_diagonal_exact(loss, theta)
    g_diag = hs.gauss_newton_diagonal_exact(logits, theta)
    assert (g_diag >= -1e-15).all()  # G is positive semi-definite
    assert (h_diag < 0).any()  # the Hessian of the non-convex loss is not
    assert (h_diag - g_diag).norm() > 0.1 * h_diag.norm()


# --------------------------------------------------------------------------- #
# Hutchinson                                                                   #
# --------------------------------------------------------------------------- #


def test_hutchinson_is_unbiased_with_the_predicted_variance(softmax_problem):
    X, _, W, H = softmax_problem
    rng = np.random.default_rng(2)
    S = 3000
    samples = hs.hutchinson_samples(lambda U: hs.softmax_regression_hvp(X, W, U), W.shape, S, rng)
    exact = np.diag(H)
    assert np.abs(z_scores(samples, exact)).max() < 5
    # the variance of u_a (Hu)_a is the sum of the squared off-diagonal entries of row a
    off = H - np.diag(exact)
    predicted = (off**2).sum(axis=1)
    keep = predicted > 0
    ratio = samples.reshape(S, -1).var(axis=0, ddof=1)[keep] / predicted[keep]
    assert 0.9 < np.median(ratio) < 1.1, np.median(ratio)
    # ... and the error of the mean shrinks like 1/sqrt(S): 16x the samples, about 4x smaller
    err = [np.linalg.norm(samples[:n].reshape(n, -1).mean(axis=0) - exact) for n in (S // 16, S)]
    assert 2.5 < err[0] / err[1] < 6.5, err


def test_hutchinson_on_an_mlp_estimates_the_hessian_not_gauss_newton(mlp_problem):
    theta, logits, loss, _ = mlp_problem
    samples = hs.hutchinson_samples_torch(loss, theta, 1500, torch.Generator().manual_seed(3))
    h_diag = hs.hessian_diagonal_exact(loss, theta)
    g_diag = hs.gauss_newton_diagonal_exact(logits, theta)
    assert np.abs(z_scores(samples.numpy(), h_diag.numpy())).max() < 5
    assert np.abs(z_scores(samples.numpy(), g_diag.numpy())).max() > 20


# --------------------------------------------------------------------------- #
# Gauss-Newton-Bartlett                                                        #
# --------------------------------------------------------------------------- #


def test_gnb_is_unbiased_for_softmax_regression(softmax_problem):
    X, _, W, H = softmax_problem
    samples = hs.gnb_samples_softmax_regression(X, W, 3000, np.random.default_rng(4))
    assert (samples >= 0).all()
    assert np.abs(z_scores(samples, np.diag(H))).max() < 5
    # the factor B matters: without it the estimate is B times too small
    assert np.abs(z_scores(samples / X.shape[0], np.diag(H))).max() > 20


def test_gnb_label_sampling_follows_the_softmax(softmax_problem):
    """The inverse-CDF sampler of the NumPy GNB: with one row, the label frequencies are p."""
    X, _, W, _ = softmax_problem
    x = X[:1]
    p = hs.softmax(x @ W)[0]
    S = 20000
    samples = hs.gnb_samples_softmax_regression(x, W, S, np.random.default_rng(5))
    # one row, coordinate (a, k) with x_a != 0: B g^2 = x_a^2 (p_k - [y = k])^2, so [y = k] is recoverable
    a = int(np.flatnonzero(np.abs(x[0]) > 0.5)[0])
    hits = np.isclose(samples[:, a, :], x[0, a] ** 2 * (1 - p) ** 2, rtol=1e-9)
    freq = hits.mean(axis=0)
    assert np.allclose(hits.sum(axis=1), 1)  # exactly one label per draw
    se = np.sqrt(p * (1 - p) / S)
    assert np.all(np.abs(freq - p) < 5 * se + 1e-12), (freq, p)


def test_gnb_on_an_mlp_estimates_gauss_newton_not_the_hessian(mlp_problem):
    theta, logits, loss, _ = mlp_problem
    samples = hs.gnb_samples_torch(logits, theta, 1500, torch.Generator().manual_seed(6))
    h_diag = hs.hessian_diagonal_exact(loss, theta)
    g_diag = hs.gauss_newton_diagonal_exact(logits, theta)
    assert (samples >= 0).all()
    assert np.abs(z_scores(samples.numpy(), g_diag.numpy())).max() < 5
    assert np.abs(z_scores(samples.numpy(), h_diag.numpy())).max() > 20


def test_the_data_labels_do_not_give_gauss_newton(mlp_problem):
    """The same formula on the data's labels (``update_hessian()`` after the ordinary
    backward pass, a common slip) is B times the squared mini-batch gradient, the quantity
    Adam averages, not the curvature: sampling the labels from the model is what makes
    GNB unbiased."""
    theta, logits, _, y = mlp_problem
    x = theta.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(hs.mean_cross_entropy(logits(x), y), x)
    empirical = len(y) * g * g
    g_diag = hs.gauss_newton_diagonal_exact(logits, theta)
    assert (empirical - g_diag).norm() > 0.3 * g_diag.norm()


def test_samplers_are_reproducible(mlp_problem):
    theta, logits, loss, _ = mlp_problem
    a = hs.gnb_samples_torch(logits, theta, 5, torch.Generator().manual_seed(7))
    b = hs.gnb_samples_torch(logits, theta, 5, torch.Generator().manual_seed(7))
    c = hs.hutchinson_samples_torch(loss, theta, 5, torch.Generator().manual_seed(7))
    d = hs.hutchinson_samples_torch(loss, theta, 5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(c, d)
