"""optimizers.Shampoo against its definition, computed independently in NumPy.

The shared behaviour (paths, state dicts, groups, closures, maximize, long
runs) comes from the catalogue entry in tests/optim_catalogue.py. Here: the
step equals the Kronecker-factor formula on vec(G), the Kronecker product
bounds full-matrix AdaGrad's statistic (Gupta et al.'s lemma), the two agree
on rank-one gradients, grafting, stale roots, the rules for vectors and for
tensors of more than two dimensions, low precision, and DTensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optimizers
from test_muon import run_dtensor_script


def _root(S: np.ndarray, p: float) -> np.ndarray:
    w, Q = np.linalg.eigh(S)
    return (Q * w**p) @ Q.T


def _grads(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def _run(opt_kwargs, grads, w0=None):
    """Steps of Shampoo with the given gradients; returns the parameter after each step."""
    w = torch.zeros(grads[0].shape, dtype=torch.float64, requires_grad=True) if w0 is None else w0
    opt = optimizers.Shampoo([w], **opt_kwargs)
    out = []
    for g in grads:
        w.grad = torch.from_numpy(g)
        opt.step()
        out.append(w.detach().numpy().copy())
    return out, opt


def _numpy_shampoo(grads, *, lr, eps, frequency=1, grafting=None, momentum=0.0):
    """Gupta et al.'s update on vec(G), written with np.kron (row-major vec)."""
    m, n = grads[0].shape
    L, R, A = eps * np.eye(m), eps * np.eye(n), np.full((m, n), eps)
    w, buf, out = np.zeros(m * n), np.zeros(m * n), []
    for t, G in enumerate(grads, start=1):
        L += G @ G.T
        R += G.T @ G
        if (t - 1) % frequency == 0:
            P = np.kron(_root(L, -0.25), _root(R, -0.25))  # (L^{-1/4} kron R^{-1/4})
        d = P @ G.reshape(-1)
        if grafting == "sgd":
            d *= np.linalg.norm(G) / np.linalg.norm(d)
        elif grafting == "adagrad":
            A += G * G
            d *= np.linalg.norm(G / np.sqrt(A)) / np.linalg.norm(d)
        buf = momentum * buf + d
        w = w - lr * buf
        out.append(w.reshape(m, n).copy())
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"precondition_frequency": 3},
        {"grafting": "sgd"},
        {"grafting": "adagrad", "precondition_frequency": 2},
        {"momentum": 0.9, "grafting": "sgd"},
    ],
    ids=["plain", "freq3", "graft-sgd", "graft-adagrad", "momentum"],
)
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_step_is_the_kronecker_factor_formula(kwargs, foreach):
    grads = _grads((3, 4), 7)
    ours, _ = _run({"lr": 0.1, "eps": 1e-3, **kwargs, "foreach": foreach}, grads)
    ref = _numpy_shampoo(grads, lr=0.1, eps=1e-3, frequency=kwargs.get("precondition_frequency", 1),
                         grafting=kwargs.get("grafting"), momentum=kwargs.get("momentum", 0.0))
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_state_holds_the_statistics_and_their_roots():
    grads = _grads((3, 5), 4, seed=2)
    _, opt = _run({"lr": 0.1, "eps": 1e-2}, grads)
    st = next(iter(opt.state.values()))
    L = 1e-2 * np.eye(3) + sum(G @ G.T for G in grads)
    R = 1e-2 * np.eye(5) + sum(G.T @ G for G in grads)
    np.testing.assert_allclose(st["L"].numpy(), L, rtol=1e-12)
    np.testing.assert_allclose(st["R"].numpy(), R, rtol=1e-12)
    np.testing.assert_allclose(st["L_inv_root"].numpy(), _root(L, -0.25), rtol=1e-9)
    np.testing.assert_allclose(st["R_inv_root"].numpy(), _root(R, -0.25), rtol=1e-9)
    assert st["step"].item() == 4


def test_kronecker_product_bounds_full_matrix_adagrad():
    """Gupta et al. (2018), Lemma 8: for gradients of rank <= r,
    eps I + (1/r) sum g g^T  <=  (eps I + sum G G^T)^{1/2} kron (eps I + sum G^T G)^{1/2}."""
    m, n, eps = 3, 4, 1e-3
    grads = _grads((m, n), 10, seed=5)
    r = min(m, n)
    H = eps * np.eye(m * n) + sum(np.outer(G.reshape(-1), G.reshape(-1)) for G in grads) / r
    L = eps * np.eye(m) + sum(G @ G.T for G in grads)
    R = eps * np.eye(n) + sum(G.T @ G for G in grads)
    K = np.kron(_root(L, 0.5), _root(R, 0.5))
    gap = np.linalg.eigvalsh(K - H)
    assert gap.min() > -1e-9 * np.abs(gap).max()
    # and the bound is not an equality for general gradients
    assert gap.max() > 0.1 * np.linalg.eigvalsh(K).max()


def test_rank_one_gradient_first_step_equals_full_matrix_adagrad():
    """For G = u v^T both methods step along G / ||G||_F (up to the eps terms)."""
    rng = np.random.default_rng(4)
    G = np.outer(rng.standard_normal(3), rng.standard_normal(4))
    ours, _ = _run({"lr": 1.0, "eps": 1e-12}, [G])
    w = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    full = optimizers.FullMatrixAdagrad([w], lr=1.0, eps=1e-12)
    w.grad = torch.from_numpy(G)
    full.step()
    np.testing.assert_allclose(ours[0], w.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(ours[0], -G / np.linalg.norm(G), atol=1e-5)
    # a rank-two gradient: the two preconditioners differ
    G2 = G + np.outer(rng.standard_normal(3), rng.standard_normal(4))
    ours2, _ = _run({"lr": 1.0, "eps": 1e-12}, [G2])
    w.grad = None
    w2 = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    full2 = optimizers.FullMatrixAdagrad([w2], lr=1.0, eps=1e-12)
    w2.grad = torch.from_numpy(G2)
    full2.step()
    assert np.abs(ours2[0] - w2.detach().numpy()).max() > 1e-2


def test_vectors_get_diagonal_adagrad_and_tensors_are_reshaped():
    rng = np.random.default_rng(6)
    b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    k = torch.zeros(2, 3, 2, dtype=torch.float64, requires_grad=True)
    opt = optimizers.Shampoo([b, k], lr=0.1, eps=1e-3)
    gb, gk = [rng.standard_normal(5) for _ in range(3)], [rng.standard_normal((2, 3, 2)) for _ in range(3)]
    A = np.full(5, 1e-3)
    xb = np.zeros(5)
    for t in range(3):
        b.grad, k.grad = torch.from_numpy(gb[t]), torch.from_numpy(gk[t])
        opt.step()
        A += gb[t] ** 2
        xb -= 0.1 * gb[t] / np.sqrt(A)
    np.testing.assert_allclose(b.detach().numpy(), xb, rtol=1e-12)
    ref = _numpy_shampoo([g.reshape(2, 6) for g in gk], lr=0.1, eps=1e-3)
    np.testing.assert_allclose(k.detach().numpy().reshape(2, 6), ref[-1], rtol=1e-10)
    assert opt.state[k]["L"].shape == (2, 2) and opt.state[k]["R"].shape == (6, 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_low_precision_tracks_float64(dtype):
    grads = _grads((4, 6), 20, seed=7)
    ref, _ = _run({"lr": 0.05, "grafting": "adagrad"}, grads)
    w = torch.zeros(4, 6, dtype=dtype, requires_grad=True)
    opt = optimizers.Shampoo([w], lr=0.05, grafting="adagrad")
    for g in grads:
        w.grad = torch.from_numpy(g).to(dtype)
        opt.step()
    assert w.dtype == dtype and opt.state[w]["L"].dtype == torch.float32
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    np.testing.assert_allclose(w.detach().double().numpy(), ref[-1], atol=tol * np.abs(ref[-1]).max())


def test_complex_and_sparse_are_refused_at_the_first_step():
    z = torch.zeros(2, 3, dtype=torch.complex128, requires_grad=True)
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="Shampoo does not support complex parameters"):
        optimizers.Shampoo([z]).step()
    w = torch.zeros(2, 3, requires_grad=True)
    w.grad = torch.ones(2, 3).to_sparse()
    with pytest.raises(RuntimeError, match="Shampoo does not support sparse gradients"):
        optimizers.Shampoo([w]).step()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_dtensor_parameters_are_refused_at_construction():
    out = run_dtensor_script("Shampoo")
    assert ("REFUSED: Shampoo does not support DTensor parameters, but param_groups[1]['params'][0] "
            "is a DTensor with placements (Shard(dim=0),)") in out
    assert "ADD REFUSED, groups: 1" in out
