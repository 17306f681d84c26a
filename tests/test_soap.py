"""optimizers.SOAP against Vyas et al.'s Algorithm 3, written independently in NumPy.

The reference here is the paper's algorithm in NumPy; the comparison with the
published implementation on PyPI, heavyball's SOAP, and the conventions in which
it differs are in ``tests/test_soap_heavyball.py`` and the class docstring.
The shared behaviour (paths, state
dicts, groups, closures, maximize, long runs) comes from the catalogue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optimizers
from test_muon import run_dtensor_script


def numpy_eigenvectors(S, Q_prev):
    """The paper's *Eigenvectors* with the package's convention for repeated eigenvalues:
    inside a cluster (gaps at most 16 n eps max|lambda|), the basis that diagonalises
    Q_prev diag(1..n) Q_prev^T there; each column's largest entry positive."""
    lam, N = np.linalg.eigh(S)
    n = len(lam)
    tol = 16 * n * np.finfo(lam.dtype).eps * np.abs(lam).max()
    cuts = [0, *(np.flatnonzero(np.diff(lam) > tol) + 1), n]
    D = Q_prev @ np.diag(np.arange(1.0, n + 1)) @ Q_prev.T
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b - a > 1:
            C = N[:, a:b]
            N[:, a:b] = C @ np.linalg.eigh(C.T @ D @ C)[1]
    return N * np.sign(N[np.abs(N).argmax(axis=0), np.arange(n)])


def numpy_soap(grads, *, lr, betas, shampoo_beta=None, eps=1e-8, weight_decay=0.0, frequency=1,
               rotate_left=True, rotate_right=True, w0=None):
    """Algorithm 3 of Vyas et al. (2024) for one m x n matrix; returns W after every step."""
    b1, b2 = betas
    bs = b2 if shampoo_beta is None else shampoo_beta
    m, n = grads[0].shape
    W = np.zeros((m, n)) if w0 is None else w0.copy()
    M, V = np.zeros((m, n)), np.zeros((m, n))
    L, R = np.zeros((m, m)), np.zeros((n, n))
    QL, QR = np.eye(m), np.eye(n)
    out = []
    for t, G in enumerate(grads, start=1):
        if t > 1:  # step 1 only initialises the basis
            k = t - 1
            M = b1 * M + (1 - b1) * G
            Gr = QL.T @ G @ QR  # basis from L_{t-1}, R_{t-1}: never the current gradient
            V = b2 * V + (1 - b2) * Gr**2
            Mr = QL.T @ M @ QR
            N = QL @ ((Mr / (1 - b1**k)) / (np.sqrt(V / (1 - b2**k)) + eps)) @ QR.T
            W = (1 - lr * weight_decay) * W - lr * N
        L = bs * L + (1 - bs) * G @ G.T
        R = bs * R + (1 - bs) * G.T @ G
        if (t - 1) % frequency == 0:
            if rotate_left:
                QL = numpy_eigenvectors(L, QL)
            if rotate_right:
                QR = numpy_eigenvectors(R, QR)
        out.append(W.copy())
    return out


def _grads(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def _run(grads, **kwargs):
    w = torch.zeros(grads[0].shape, dtype=torch.float64, requires_grad=True)
    opt = optimizers.SOAP([w], **kwargs)
    out = []
    for g in grads:
        w.grad = torch.from_numpy(g)
        opt.step()
        out.append(w.detach().numpy().copy())
    return out, opt


CASES = [
    ({"betas": (0.9, 0.95), "precondition_frequency": 1}, (3, 4)),
    ({"betas": (0.95, 0.95), "precondition_frequency": 3, "weight_decay": 0.1}, (4, 3)),
    ({"betas": (0.9, 0.99), "shampoo_beta": 0.8, "precondition_frequency": 2, "eps": 1e-6}, (5, 4)),
    # R = G^T G has a zero eigenvalue of multiplicity 3 after step 1: the basis convention decides
    ({"betas": (0.9, 0.95), "precondition_frequency": 1}, (2, 5)),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("kwargs,shape", CASES, ids=["f1", "f3-wd", "beta_s", "f1-2x5"])
def test_matches_the_papers_algorithm_in_numpy(kwargs, shape, foreach):
    grads = _grads(shape, 12)
    ours, _ = _run(grads, lr=0.01, foreach=foreach, **{"weight_decay": 0.0, **kwargs})
    ref = numpy_soap(grads, lr=0.01, betas=kwargs["betas"], shampoo_beta=kwargs.get("shampoo_beta"),
                     eps=kwargs.get("eps", 1e-8), weight_decay=kwargs.get("weight_decay", 0.0),
                     frequency=kwargs["precondition_frequency"])
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_one_side_unrotated_above_max_precond_dim():
    grads = _grads((3, 6), 8, seed=1)
    ours, opt = _run(grads, lr=0.01, max_precond_dim=4, precondition_frequency=1, weight_decay=0.0)
    st = next(iter(opt.state.values()))
    assert "Q_L" in st and "Q_R" not in st and "R" not in st
    ref = numpy_soap(grads, lr=0.01, betas=(0.95, 0.95), rotate_right=False)
    np.testing.assert_allclose(ours[-1], ref[-1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (5,)], ids=["unrotated-matrix", "vector"])
def test_without_rotation_it_is_torch_adamw(shape):
    """max_precond_dim=1 leaves both sides unrotated; vectors are never rotated: AdamW."""
    grads = _grads(shape, 15, seed=2)
    w = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    r = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    cfg = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    ours = optimizers.SOAP([w], max_precond_dim=1, **cfg)
    ref = torch.optim.AdamW([r], **cfg)
    w.grad = torch.from_numpy(grads[0])
    ours.step()  # step 1 moves nothing
    assert not w.detach().any()
    for g in grads[1:]:
        w.grad, r.grad = torch.from_numpy(g), torch.from_numpy(g)
        ours.step()
        ref.step()
    np.testing.assert_allclose(w.detach().numpy(), r.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_is_adam_on_the_rotated_weight_when_the_basis_is_frozen():
    """Freeze the basis built at step 1 (a huge f): SOAP on W is Adam on Q_L^T W Q_R."""
    grads = _grads((3, 4), 10, seed=3)
    ours, opt = _run(grads, lr=0.01, precondition_frequency=10**6, weight_decay=0.0, betas=(0.9, 0.99))
    st = next(iter(opt.state.values()))
    QL, QR = st["Q_L"].numpy(), st["Q_R"].numpy()
    r = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([r], lr=0.01, betas=(0.9, 0.99))
    for g in grads[1:]:  # (step 1 only built the basis)
        r.grad = torch.from_numpy(QL.T @ g @ QR)  # the gradient with respect to Q_L^T W Q_R
        adam.step()
    np.testing.assert_allclose(QL.T @ ours[-1] @ QR, r.detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_low_precision_tracks_float64(dtype):
    grads = _grads((4, 5), 20, seed=4)
    ref, _ = _run(grads, lr=0.01, precondition_frequency=2)
    w = torch.zeros(4, 5, dtype=dtype, requires_grad=True)
    opt = optimizers.SOAP([w], lr=0.01, precondition_frequency=2)
    for g in grads:
        w.grad = torch.from_numpy(g).to(dtype)
        opt.step()
    st = opt.state[w]
    assert w.dtype == dtype and st["exp_avg"].dtype == dtype and st["L"].dtype == torch.float32
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    np.testing.assert_allclose(w.detach().double().numpy(), ref[-1], atol=tol * np.abs(ref[-1]).max())


def test_complex_and_sparse_are_refused_at_the_first_step():
    z = torch.zeros(2, 3, dtype=torch.complex128, requires_grad=True)
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="SOAP does not support complex parameters"):
        optimizers.SOAP([z]).step()
    w = torch.zeros(2, 3, requires_grad=True)
    w.grad = torch.ones(2, 3).to_sparse()
    with pytest.raises(RuntimeError, match="SOAP does not support sparse gradients"):
        optimizers.SOAP([w]).step()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_dtensor_parameters_are_refused_at_construction():
    out = run_dtensor_script("SOAP")
    assert ("REFUSED: SOAP does not support DTensor parameters, but param_groups[1]['params'][0] "
            "is a DTensor with placements (Shard(dim=0),)") in out
    assert "ADD REFUSED, groups: 1" in out


@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (5, 6)], ids=["1x3", "3x5", "5x6"])
@pytest.mark.parametrize("frequency", [1, 2], ids=["f1", "f2"])
def test_a_last_bit_change_of_the_gradient_moves_the_run_by_round_off(shape, frequency):
    """For 1x3 and 3x5 gradients R's zero eigenvalue is repeated after step 1 (rank 1 of 3,
    3 of 5); a basis of it chosen by round-off (plain eigh) makes Adam's second moment, and
    the trajectory, jump when the gradient changes in its last bit: by about 1e-2 here (0.3
    to 0.5 of the distance travelled; 3e-4 to 1.5e-2 on the network of
    tests/test_distributed.py). With the basis convention it moves by round-off. 5x6 (a
    simple zero eigenvalue: only a sign, to which the update is invariant) is the control."""
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(shape) for _ in range(6)]
    # every entry changed in its last bit (a relative change of 2**-52 or 0)
    nudged = [g * (1 + rng.integers(-1, 2, size=shape) * 2.0**-52) for g in grads]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(grads, nudged))
    kw = dict(lr=0.01, betas=(0.9, 0.95), weight_decay=0.0, precondition_frequency=frequency)
    a, _ = _run(grads, **kw)
    b, _ = _run(nudged, **kw)
    moved = np.abs(a[-1]).max()
    assert moved > 0.01  # (lr per step, five steps)
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) <= 1e-12 * moved


@pytest.mark.parametrize("shape, max_precond_dim", [((5, 3), 10_000), ((4, 6), 4), ((5,), 10_000)])
def test_traced_direction_equals_the_eager_one(shape, max_precond_dim):
    """The form of the step that ``torch.compile`` traces (no host read of the counter: step 1
    by ``torch.where``, the refresh by ``torch.cond``, the eigenbasis clusters by masking) equals
    the eager one from step 1 on, executed op by op here; early statistics are rank-deficient, so
    the zero-eigenvalue clusters are exercised. (float64 default dtype: the counter is then
    float64, and the traced bias corrections round like the eager Python floats.)"""
    from optimizers import soap as S

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _compare_traced_and_eager(S, shape, max_precond_dim)
    finally:
        torch.set_default_dtype(previous)


def _compare_traced_and_eager(S, shape, max_precond_dim):
    gen = torch.Generator().manual_seed(7)
    eager = S.init_state(torch.zeros(shape, dtype=torch.float64), max_precond_dim)
    traced = {k: v.clone() for k, v in eager.items()}
    kw = dict(beta1=0.9, beta2=0.99, shampoo_beta=0.95, eps=1e-8, precondition_frequency=3)
    for t in range(1, 10):
        G = torch.randn(shape, generator=gen, dtype=torch.float64)
        eager["step"] += 1
        traced["step"] += 1
        N_e = S.soap_direction(G, eager, **kw)
        N_t = S._soap_direction_traced(G, traced, **kw)
        if N_e is None:
            assert t == 1 and torch.equal(N_t, torch.zeros_like(N_t))
        else:
            torch.testing.assert_close(N_t, N_e, rtol=1e-10, atol=1e-12)
        for key in eager:
            torch.testing.assert_close(traced[key], eager[key], rtol=1e-10, atol=1e-12, msg=f"{key} at step {t}")
