"""LM-Adagrad and FullMatrixAdagrad against independent NumPy references.

The generic behaviour (param groups, closures, validation, state-dict resume, ...)
is covered by the catalogue harness in test_optimizers.py; this file checks the
mathematics: exact windowed full-matrix AdaGrad, an SVD of the d x k window,
degenerate histories, the extras and rotation invariance.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import optimizers

RTOL = 1e-6  # relative tolerance of the float64 comparisons (observed: ~1e-11)


# --------------------------------------------------------------------------- #
# NumPy references                                                             #
# --------------------------------------------------------------------------- #


def np_full_matrix_direction(A: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """(A + eps I)^{-1/2} g by a d x d eigendecomposition."""
    mu, Q = np.linalg.eigh(A)
    return Q @ ((Q.T @ g) / np.sqrt(np.clip(mu, 0, None) + eps))


def np_svd_direction(M: np.ndarray, g: np.ndarray, eps: float, centered: bool) -> np.ndarray:
    """The SVD formulation: thin SVD of the d x n window (columns = gradients),
    U (S^2 + eps)^{-1/2} U^T g, with exactly-degenerate singular directions
    (s <= 1e-7 s_max) dropped: their U columns are arbitrary."""
    if centered:
        M = M - M.mean(axis=1, keepdims=True)
    U, S, _ = np.linalg.svd(M, full_matrices=False)
    keep = S > 1e-7 * S.max() if S.max() > 0 else np.zeros_like(S, dtype=bool)
    U, S = U[:, keep], S[keep]
    return U @ ((U.T @ g) / np.sqrt(S**2 + eps))


def gradient_sequence(T: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a drifting mean plus noise, so that the window is not isotropic
    return rng.normal(size=(T, d)) + np.linspace(0, 2, T)[:, None] * rng.normal(size=d)


def run_torch(make_opt, grads: np.ndarray, shape=None, dtype=torch.float64) -> np.ndarray:
    """Feed a fixed gradient sequence to an optimizer; return the iterates (T, d)."""
    d = grads.shape[1]
    shape = shape or (d,)
    x = torch.zeros(shape, dtype=dtype, requires_grad=True)
    opt = make_opt([x])
    out = []
    for g in grads:
        x.grad = torch.as_tensor(g, dtype=dtype).reshape(shape)
        opt.step()
        out.append(x.detach().reshape(-1).to(torch.float64).numpy().copy())
    return np.array(out)


def run_numpy(direction, grads: np.ndarray, k: int | None, lr: float) -> np.ndarray:
    x = np.zeros(grads.shape[1])
    out = []
    for t in range(len(grads)):
        lo = 0 if k is None else max(0, t - k + 1)
        M = grads[lo : t + 1].T  # d x n, columns are gradients
        x = x - lr * direction(M, grads[t])
        out.append(x.copy())
    return np.array(out)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------- #
# Exactness                                                                    #
# --------------------------------------------------------------------------- #

CASES = [(20, 5, 0), (50, 10, 1), (6, 10, 2), (3, 1, 3), (30, 30, 4)]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("d,k,seed", CASES)
def test_equals_windowed_full_matrix_adagrad(d, k, seed, foreach):
    grads = gradient_sequence(25, d, seed)
    eps = 1e-6
    ref = run_numpy(lambda M, g: np_full_matrix_direction(M @ M.T, g, eps), grads, k, lr=0.1)
    ours = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=k, eps=eps, foreach=foreach), grads)
    exact = run_torch(lambda p: optimizers.FullMatrixAdagrad(p, lr=0.1, history_size=k, eps=eps), grads)
    assert rel_err(ours, ref) < RTOL
    assert rel_err(exact, ref) < 1e-10


@pytest.mark.parametrize("centered", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("d,k,seed", CASES)
def test_equals_the_window_svd_formulation(d, k, seed, centered):
    grads = gradient_sequence(25, d, seed)
    ref = run_numpy(lambda M, g: np_svd_direction(M, g, 1e-6, centered), grads, k, lr=0.1)
    ours = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=k, centered=centered), grads)
    # from the second step on (the first centred step is zero in both; with k = 1
    # the centred window is always zero and nothing moves)
    if centered and k == 1:
        np.testing.assert_array_equal(ours, 0.0)
        np.testing.assert_allclose(ref, 0.0, atol=1e-12)
        return
    assert rel_err(ours[1:], ref[1:]) < RTOL
    np.testing.assert_allclose(ours[0], ref[0], rtol=RTOL, atol=1e-12)


def test_full_matrix_adagrad_accumulates_every_step():
    grads = gradient_sequence(15, 8, 5)
    ref = run_numpy(lambda M, g: np_full_matrix_direction(M @ M.T, g, 1e-4), grads, None, lr=0.2)
    for foreach in (False, True):
        ours = run_torch(lambda p: optimizers.FullMatrixAdagrad(p, lr=0.2, eps=1e-4, foreach=foreach), grads)
        assert rel_err(ours, ref) < 1e-10


def test_parameter_shape_does_not_matter():
    """A (4, 5) matrix parameter is whitened as the flat 20-vector."""
    grads = gradient_sequence(12, 20, 6)
    flat = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=4), grads)
    matrix = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=4), grads, shape=(4, 5))
    np.testing.assert_allclose(matrix, flat, rtol=1e-12, atol=1e-14)


def test_concatenate_whitens_all_parameters_as_one_vector():
    grads = gradient_sequence(12, 9, 7)
    flat = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=5), grads)
    for foreach in (False, True):
        a = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        opt = optimizers.LMAdagrad([a, b], lr=0.1, history_size=5, concatenate=True, foreach=foreach)
        out = []
        for g in grads:
            a.grad, b.grad = torch.from_numpy(g[:4].copy()), torch.from_numpy(g[4:].copy())
            opt.step()
            out.append(torch.cat([a, b]).detach().numpy().copy())
        assert rel_err(np.array(out), flat) < 1e-9
    # per-parameter mode differs (the cross terms are ignored)
    sep = optimizers.LMAdagrad([a, b], lr=0.1)
    assert not sep.defaults["concatenate"]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_concatenate_refuses_histories_of_different_lengths(foreach):
    a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = optimizers.LMAdagrad([a, b], concatenate=True, foreach=foreach)
    a.grad = torch.ones(3, dtype=torch.float64)
    opt.step()  # only `a` has a gradient
    b.grad = torch.ones(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="step counts differ"):
        opt.step()


# --------------------------------------------------------------------------- #
# Degenerate histories                                                         #
# --------------------------------------------------------------------------- #


def test_first_step_is_the_normalised_gradient():
    g = np.array([3.0, -4.0, 0.0])
    x = run_torch(lambda p: optimizers.LMAdagrad(p, lr=1.0, eps=1e-6), g[None])
    np.testing.assert_allclose(x[0], -g / np.sqrt(25 + 1e-6), rtol=1e-12)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("centered", [False, True], ids=["uncentred", "centred"])
def test_degenerate_histories_give_finite_updates(centered, foreach):
    rng = np.random.default_rng(0)
    g = rng.normal(size=6)
    sequences = {
        "repeated": np.tile(g, (8, 1)),
        "zeros": np.zeros((8, 6)),
        "zeros then g": np.vstack([np.zeros((3, 6)), np.tile(g, (5, 1))]),
        "d < k": rng.normal(size=(15, 3)),
        "rank one": np.outer(rng.normal(size=9), g),
    }
    for name, grads in sequences.items():
        x = run_torch(lambda p: optimizers.LMAdagrad(p, lr=1.0, history_size=10, centered=centered,
                                                     foreach=foreach), grads)
        assert np.all(np.isfinite(x)), name
        assert np.max(np.abs(x)) < 20, name  # no 1/sqrt(eps) blow-up
    # repeated gradient, uncentred: n copies of g give g / sqrt(n |g|^2 + eps)
    x = run_torch(lambda p: optimizers.LMAdagrad(p, lr=1.0, history_size=4, centered=centered), np.tile(g, (6, 1)))
    steps = -np.diff(np.vstack([np.zeros(6), x]), axis=0)
    if centered:  # the centred window is zero: nothing moves
        np.testing.assert_array_equal(steps, 0.0)
    else:
        for t, s in enumerate(steps):
            n = min(t + 1, 4)
            np.testing.assert_allclose(s, g / np.sqrt(n * g @ g + 1e-6), rtol=1e-10)


def test_zero_eps_is_a_pseudo_inverse():
    grads = gradient_sequence(10, 3, 8)  # d < k: the window's Gram matrix is singular
    x = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, eps=0.0), grads)
    y = run_torch(lambda p: optimizers.FullMatrixAdagrad(p, lr=0.1, eps=0.0, history_size=10), grads)
    assert np.all(np.isfinite(x)) and rel_err(x, y) < RTOL


# --------------------------------------------------------------------------- #
# The extras, each against a NumPy reference                                   #
# --------------------------------------------------------------------------- #


def np_lm_adagrad(grads, lr, k, eps=1e-6, momentum=0.0, mode="gradient", update_norm=None, gamma=0.9):
    """Independent NumPy version of every option, for a single parameter vector."""
    d = grads.shape[1]
    x, m, r = np.zeros(d), np.zeros(d), 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        M = grads[max(0, t - k) : t].T
        v = g
        if momentum and mode == "gradient":
            m = momentum * m + (1 - momentum) * g
            v = m / (1 - momentum**t)
        u = np_svd_direction(M, v, eps, False)
        if update_norm is not None:
            nu = np.linalg.norm(u)
            if t == 1:
                r = nu
            else:
                scale = r / nu if nu > 0 else 1.0
                if update_norm == "clip":
                    scale = min(scale, 1.0)
                u = u * scale
                r = gamma * r + (1 - gamma) * nu
        if momentum and mode == "update":
            m = momentum * m + (1 - momentum) * u
            u = m / (1 - momentum**t)
        x = x - lr * u
        out.append(x.copy())
    return np.array(out)


EXTRAS = [
    dict(momentum=0.9, mode="gradient"),
    dict(momentum=0.9, mode="update"),
    dict(update_norm="clip"),
    dict(update_norm="graft", gamma=0.5),
    dict(momentum=0.8, mode="update", update_norm="clip"),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_extras_match_numpy(extra, foreach):
    grads = gradient_sequence(20, 12, 9)
    ref = np_lm_adagrad(grads, 0.1, 5, **extra)
    kw = dict(momentum=extra.get("momentum", 0.0), momentum_mode=extra.get("mode", "gradient"),
              update_norm=extra.get("update_norm"), update_norm_beta=extra.get("gamma", 0.9))
    ours = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=5, foreach=foreach, **kw), grads)
    assert rel_err(ours, ref) < RTOL


def test_weight_decay_coupled_and_decoupled():
    torch.manual_seed(0)
    w0 = torch.randn(6, dtype=torch.float64)
    target = torch.randn(6, dtype=torch.float64)

    def run(**kw):
        w = w0.clone().requires_grad_()
        opt = optimizers.LMAdagrad([w], lr=0.1, history_size=3, **kw)
        ws = []
        for _ in range(5):
            opt.zero_grad()
            ((w - target) ** 2).sum().backward()
            opt.step()
            ws.append(w.detach().clone())
        return w, opt, ws

    # coupled: same as adding 0.5 * wd * |w|^2 to the loss
    w_c, _, _ = run(weight_decay=0.1)
    w = w0.clone().requires_grad_()
    opt = optimizers.LMAdagrad([w], lr=0.1, history_size=3)
    for _ in range(5):
        opt.zero_grad()
        (((w - target) ** 2).sum() + 0.05 * (w**2).sum()).backward()
        opt.step()
    torch.testing.assert_close(w_c, w, rtol=1e-12, atol=1e-14)
    # decoupled: theta <- theta (1 - lr wd) - lr u
    _, _, ws_d = run(weight_decay=0.1, decoupled_weight_decay=True)
    _, _, ws_0 = run()
    assert not torch.allclose(ws_d[-1], ws_0[-1])


# --------------------------------------------------------------------------- #
# Rotation invariance, state, dtypes, devices                                  #
# --------------------------------------------------------------------------- #


def test_rotation_invariance():
    """Full-matrix whitening commutes with rotations; diagonal AdaGrad does not."""
    rng = np.random.default_rng(10)
    d = 8
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    H = np.diag(np.logspace(0, 2, d))
    x0 = rng.normal(size=d)

    def trajectory(make, A, start):
        x = torch.tensor(start, requires_grad=True)
        opt = make([x])
        At = torch.from_numpy(A)
        out = []
        for _ in range(30):
            opt.zero_grad()
            (0.5 * x @ At @ x).backward()
            opt.step()
            out.append(x.detach().numpy().copy())
        return np.array(out)

    # (momentum_mode="gradient" is invariant too in exact arithmetic, but it whitens a
    # vector outside the window's span, which amplifies round-off: see the chapter)
    for make, invariant in [
        (lambda p: optimizers.LMAdagrad(p, lr=0.05, history_size=5), True),
        (lambda p: optimizers.LMAdagrad(p, lr=0.05, history_size=5, momentum=0.9,
                                        momentum_mode="update", update_norm="clip"), True),
        (lambda p: optimizers.FullMatrixAdagrad(p, lr=0.3), True),
        (lambda p: optimizers.Adagrad(p, lr=0.05), False),
    ]:
        plain = trajectory(make, H, x0)
        rotated = trajectory(make, Q @ H @ Q.T, Q @ x0)
        err = rel_err(rotated @ Q, plain)
        assert (err < 1e-8) if invariant else (err > 1e-3), err


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize(
    "cls,kw",
    [
        (optimizers.LMAdagrad, dict(history_size=4, centered=True, momentum=0.9, momentum_mode="update",
                                    update_norm="graft")),
        (optimizers.LMAdagrad, dict(history_size=3, momentum=0.5, concatenate=True, weight_decay=0.01)),
        (optimizers.FullMatrixAdagrad, dict()),
        (optimizers.FullMatrixAdagrad, dict(history_size=3)),
    ],
    ids=["lm-centred-update-graft", "lm-concat", "fm-all", "fm-window"],
)
def test_state_dict_resume_is_bit_identical_across_wraparound(cls, kw, foreach):
    """Interrupt after 7 steps (the ring buffer has wrapped), save, restore, continue."""
    grads = [gradient_sequence(15, 10, 11), gradient_sequence(15, 6, 12)]

    def make():
        ps = [torch.zeros(10, dtype=torch.float64, requires_grad=True),
              torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)]
        return ps, cls(ps, lr=0.1, foreach=foreach, **kw)

    def feed(ps, opt, steps):
        for t in steps:
            ps[0].grad = torch.from_numpy(grads[0][t].copy())
            ps[1].grad = torch.from_numpy(grads[1][t].reshape(2, 3).copy())
            opt.step()

    full_p, full_o = make()
    feed(full_p, full_o, range(15))
    a_p, a_o = make()
    feed(a_p, a_o, range(7))
    sd = _roundtrip(a_o.state_dict())
    b_p = [p.detach().clone().requires_grad_() for p in a_p]
    b_o = cls(b_p, lr=0.1, foreach=foreach, **kw)
    b_o.load_state_dict(sd)
    feed(b_p, b_o, range(7, 15))
    for x, y in zip(full_p, b_p):
        assert torch.equal(x, y)
    if cls is optimizers.LMAdagrad:
        st = b_o.state[b_p[1]]
        assert st["history"].shape == (kw["history_size"], 2, 3) and float(st["step"]) == 15


def test_gram_stays_float64_through_a_state_dict_round_trip():
    torch.manual_seed(0)
    p = torch.zeros(50, requires_grad=True)
    opt = optimizers.LMAdagrad([p], history_size=4)
    for _ in range(6):
        p.grad = torch.randn(50)
        opt.step()
    q = p.detach().clone().requires_grad_()
    opt2 = optimizers.LMAdagrad([q], history_size=4)
    opt2.load_state_dict(_roundtrip(opt.state_dict()))
    assert opt2.state[q]["gram"].dtype == torch.float64
    assert torch.equal(opt2.state[q]["gram"], opt.state[p]["gram"])
    assert opt2.state[q]["gram"] is not opt.state[p]["gram"]
    # the incrementally maintained Gram matrix is the Gram matrix of the window
    M = opt.state[p]["history"].double().reshape(4, -1)
    torch.testing.assert_close(opt.state[p]["gram"], M @ M.T, rtol=1e-12, atol=1e-12)


def test_history_memory_is_k_floats_per_element():
    p = torch.zeros(100, 7, requires_grad=True)
    opt = optimizers.LMAdagrad([p], history_size=10)
    p.grad = torch.ones_like(p)
    opt.step()
    st = opt.state[p]
    assert st["history"].dtype == torch.float32
    assert st["history"].numel() == 10 * p.numel()
    assert set(st) == {"step", "history", "gram"}
    assert st["gram"].shape == (10, 10) and st["gram"].dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_close_to_float64(dtype):
    grads = gradient_sequence(20, 30, 13)
    ref = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=5), grads)
    low = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=5), grads, dtype=dtype)
    assert np.all(np.isfinite(low))
    assert rel_err(low, ref) < (1e-4 if dtype == torch.float32 else 5e-2)


def test_complex_parameters_are_pairs_of_reals():
    grads = gradient_sequence(10, 8, 14)
    real = run_torch(lambda p: optimizers.LMAdagrad(p, lr=0.1, history_size=4), grads)
    z = torch.zeros(4, dtype=torch.complex128, requires_grad=True)
    opt = optimizers.LMAdagrad([z], lr=0.1, history_size=4)
    out = []
    for g in grads:
        z.grad = torch.view_as_complex(torch.from_numpy(g.reshape(4, 2).copy()))
        opt.step()
        out.append(torch.view_as_real(z.detach()).reshape(-1).numpy().copy())
    assert rel_err(np.array(out), real) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_cuda_matches_cpu(foreach):
    grads = gradient_sequence(20, 50, 15)
    kw = dict(lr=0.1, history_size=6, momentum=0.9, update_norm="clip", foreach=foreach)
    cpu = run_torch(lambda p: optimizers.LMAdagrad(p, **kw), grads)
    x = torch.zeros(50, dtype=torch.float64, device="cuda", requires_grad=True)
    opt = optimizers.LMAdagrad([x], **kw)
    out = []
    for g in grads:
        x.grad = torch.from_numpy(g).cuda()
        opt.step()
        out.append(x.detach().cpu().numpy().copy())
    assert rel_err(np.array(out), cpu) < 1e-9
