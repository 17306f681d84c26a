"""optimizers.book.newton: the softmax-regression problem's gradient and Hessian are its loss's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizers.book.newton import softmax_regression


def _problem(weight_decay=0.1, bias=True):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    y = rng.integers(0, 3, size=30)
    return softmax_regression(X, y, weight_decay=weight_decay, bias=bias, n_classes=3)


@pytest.mark.parametrize("bias", [True, False])
def test_gradient_and_hessian_match_autograd(bias):
    prob = _problem(bias=bias)
    w = np.random.default_rng(1).standard_normal(prob.x0.size)
    wt = torch.tensor(w, requires_grad=True)
    loss = prob.f_torch(wt)
    (g,) = torch.autograd.grad(loss, wt)
    H = torch.autograd.functional.hessian(prob.f_torch, torch.tensor(w))
    assert prob.f(w) == pytest.approx(loss.item(), rel=1e-13)
    np.testing.assert_allclose(prob.grad(w), g.numpy(), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(prob.hessian(w), H.numpy(), rtol=1e-10, atol=1e-13)


def test_hessian_is_positive_definite_with_weight_decay_only():
    w = np.zeros(_problem().x0.size)
    assert np.linalg.eigvalsh(_problem(weight_decay=0.1).hessian(w)).min() >= 0.1 - 1e-12
    # Without it, shifting every class's weights by the same vector leaves the loss unchanged.
    assert abs(np.linalg.eigvalsh(_problem(weight_decay=0.0).hessian(w)).min()) < 1e-12


def test_large_logits_stay_finite():
    prob = _problem()
    w = 1e3 * np.ones(prob.x0.size)
    w[::3] = -1e3
    assert np.isfinite(prob.f(w)) and np.all(np.isfinite(prob.grad(w)))


def test_validation():
    with pytest.raises(ValueError, match="weight_decay"):
        softmax_regression(np.zeros((3, 2)), np.zeros(3, dtype=int), weight_decay=-1.0)
    with pytest.raises(ValueError, match="X must be"):
        softmax_regression(np.zeros(3), np.zeros(3, dtype=int))
