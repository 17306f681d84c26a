"""Yogi-specific tests (the generic behaviour is covered through tests/optim_catalogue.py).

* optimizers.Yogi equals torch_optimizer.Yogi (0.3.0) in float64, in its default
  configuration, with weight decay and with other betas/eps/initial_accumulator,
  on both implementation paths, state included;
* a NumPy transcription of the docstring's equations gives the same trajectory;
* the second moment moves by exactly (1 - beta2) g^2 per step, in the direction of g^2;
* the conventions the docstring names: m_0 = v_0 = initial_accumulator, and the
  paper's m_0 = 0 differs from it by beta1^t * initial_accumulator in m.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optimizers
from reference_problem import make_model, run_model
from reference_problem import minibatches as _minibatches

torch_optimizer = pytest.importorskip("torch_optimizer")

TOL = dict(rtol=1e-12, atol=1e-14)


def minibatches(steps: int, seed: int = 1):
    """Minibatches of 8: gradients change size, so v moves both ways."""
    return _minibatches(steps, seed, batch=8)


CONFIGS = [
    {},  # torch_optimizer's defaults: lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator=1e-6
    {"weight_decay": 0.1},
    {"lr": 3e-2, "betas": (0.5, 0.9), "eps": 1e-6, "initial_accumulator": 1e-2, "weight_decay": 1e-2},
    {"lr": 1e-2, "eps": 0.0, "initial_accumulator": 0.5},
]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "weight_decay", "other", "eps0"])
def test_matches_torch_optimizer(cfg, foreach):
    batches = minibatches(300)
    ours_model, ref_model = make_model(), make_model()
    ours = optimizers.Yogi(ours_model.parameters(), foreach=foreach, **cfg)
    ref = torch_optimizer.Yogi(ref_model.parameters(), **cfg)
    run_model(ours_model, ours, batches)
    run_model(ref_model, ref, batches)
    increased = decreased = 0
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, **TOL)
        s, r = ours.state[p], ref.state[q]
        assert s["step"].item() == r["step"] == 300
        torch.testing.assert_close(s["exp_avg"], r["exp_avg"], **TOL)
        torch.testing.assert_close(s["exp_avg_sq"], r["exp_avg_sq"], **TOL)
    # the run exercised both signs of the second-moment update (checked on a replay below)
    model = make_model()
    opt = optimizers.Yogi(model.parameters(), foreach=foreach, **cfg)
    for xb, yb in batches[:100]:
        before = [opt.state[p]["exp_avg_sq"].clone() if p in opt.state else None
                  for p in model.parameters()]
        opt.zero_grad()
        ((model(xb) - yb) ** 2).mean().backward()
        opt.step()
        for b, p in zip(before, model.parameters()):
            if b is not None:
                increased += int((opt.state[p]["exp_avg_sq"] > b).sum())
                decreased += int((opt.state[p]["exp_avg_sq"] < b).sum())
    assert increased > 0 and decreased > 0


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_maximize_is_minimizing_the_negative(foreach):
    batches = minibatches(60)
    m1, m2 = make_model(), make_model()
    o1 = optimizers.Yogi(m1.parameters(), maximize=True, weight_decay=0.1, foreach=foreach)
    o2 = torch_optimizer.Yogi(m2.parameters(), weight_decay=0.1)
    for xb, yb in batches:
        o1.zero_grad()
        (-((m1(xb) - yb) ** 2).mean()).backward()
        o1.step()
        o2.zero_grad()
        ((m2(xb) - yb) ** 2).mean().backward()
        o2.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, **TOL)


def numpy_yogi(theta0, grad_fn, steps, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-3, v_init=1e-6,
               weight_decay=0.0):
    """The docstring's equations, line by line."""
    theta = theta0.copy()
    m = np.full_like(theta, v_init)
    v = np.full_like(theta, v_init)
    path = [theta.copy()]
    for t in range(steps):
        g = grad_fn(theta) + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = v - (1 - beta2) * np.sign(v - g**2) * g**2
        v_hat = v / (1 - beta2 ** (t + 1))
        theta = theta - lr / (1 - beta1 ** (t + 1)) * m / (np.sqrt(v_hat) + eps)
        path.append(theta.copy())
    return np.array(path)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_matches_numpy_transcription(foreach):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    H = A @ A.T / 6 + 0.1 * np.eye(6)
    theta0 = rng.standard_normal(6)
    kw = dict(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-4, v_init=1e-3, weight_decay=0.05)
    ref = numpy_yogi(theta0, lambda x: H @ x, 200, **kw)
    p = torch.tensor(theta0, requires_grad=True)
    Ht = torch.tensor(H)
    opt = optimizers.Yogi([p], lr=kw["lr"], betas=(kw["beta1"], kw["beta2"]), eps=kw["eps"],
                          initial_accumulator=kw["v_init"], weight_decay=kw["weight_decay"],
                          foreach=foreach)
    path = [p.detach().numpy().copy()]
    for _ in range(200):
        opt.zero_grad()
        (0.5 * p @ Ht @ p).backward()
        opt.step()
        path.append(p.detach().numpy().copy())
    np.testing.assert_allclose(np.array(path), ref, rtol=1e-12, atol=1e-14)


def test_second_moment_moves_by_a_fixed_amount():
    """|v_{t+1} - v_t| = (1 - beta2) g_t^2, with the sign of g_t^2 - v_t (Adam's moves by (1 - beta2)|g^2 - v|)."""
    beta2 = 0.9
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = optimizers.Yogi([p], betas=(0.9, beta2), initial_accumulator=1.0)
    grads = [torch.tensor([0.1, 3.0, 1.0, 0.0], dtype=torch.float64),
             torch.tensor([2.0, 0.01, 0.5, 4.0], dtype=torch.float64)]
    v = torch.ones(4, dtype=torch.float64)
    for k, g in enumerate(grads):
        p.grad = g.clone()
        opt.step()
        expected = v + (1 - beta2) * torch.sign(g**2 - v) * g**2
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], expected, rtol=0, atol=1e-15)
        if k == 0:  # g^2 = v in coordinate 2: the sign is zero and v stays
            assert opt.state[p]["exp_avg_sq"][2].item() == 1.0
        v = expected
    assert torch.all(v >= 0)


def test_initial_moments_and_the_papers_m0():
    """m_0 = v_0 = initial_accumulator (torch-optimizer); with m_0 = 0 (paper, TF Addons) m differs by beta1^t v_init."""
    v_init, beta1 = 1e-6, 0.9
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = optimizers.Yogi([p], initial_accumulator=v_init)
    g = torch.tensor([1e-3, -2.0, 0.5], dtype=torch.float64)
    m_paper = torch.zeros(3, dtype=torch.float64)
    for t in range(1, 6):
        p.grad = g.clone()
        opt.step()
        m_paper = beta1 * m_paper + (1 - beta1) * g
        torch.testing.assert_close(opt.state[p]["exp_avg"] - m_paper,
                                   torch.full((3,), beta1**t * v_init, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-18)


def test_large_eps_is_momentum_sgd_with_rate_lr_over_eps():
    """For |g| << eps, the Yogi step is momentum SGD (dampened, bias-corrected) with rate lr/eps."""
    lr, eps = 1e-2, 1e3
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    q = p.detach().clone()
    opt = optimizers.Yogi([p], lr=lr, eps=eps, initial_accumulator=0.0)
    m = torch.zeros(2, dtype=torch.float64)
    for t in range(1, 30):
        opt.zero_grad()
        (p**2).sum().backward()
        opt.step()
        m = 0.9 * m + 0.1 * (2 * q)
        q = q - (lr / eps) / (1 - 0.9**t) * m
    torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=0)
