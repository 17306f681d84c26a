"""LBFGS: what the shared catalogue tests cannot check (it needs a closure and one group).

The catalogue entry (tests/optim_catalogue.py, ``OWN_TESTS``) holds the
configurations and error inputs; here each configuration runs through several
``step(closure)`` calls against torch.optim.LBFGS, and the pieces (two-loop
recursion, cubic model, strong-Wolfe search) are checked against their
definitions.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import optimizers
from optimizers.lbfgs import cubic_interpolate, lbfgs_direction, strong_wolfe
from optim_catalogue import OWN_TESTS
from test_optimizers import TIGHT, _roundtrip, loss_fn, make_data, make_model, rosenbrock, tol_for
from test_properties import _single_intra_op_thread  # noqa: F401  (autouse fixture)

INFO = next(i for i in OWN_TESTS if i.name == "LBFGS")
CALLS = 4  # step(closure) calls per run: the state carries over between them


def _closure(model, opt, data, counter=None):
    def closure():
        if counter is not None:
            counter.append(1)
        opt.zero_grad()
        loss = loss_fn(model, data)
        loss.backward()
        return loss

    return closure


def _run(cls, cfg, dtype=torch.float64, calls=CALLS, model=None):
    model = model if model is not None else make_model(dtype)
    opt = cls(model.parameters(), **cfg)
    data = make_data(dtype)
    losses = [opt.step(_closure(model, opt, data)).item() for _ in range(calls)]
    return model, opt, losses


def _assert_state_close(o1, o2, **tol):
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].keys() == s2[k].keys()
        for key, a in s1[k].items():
            b = s2[k][key]
            if isinstance(a, list):
                assert len(a) == len(b), key
                pairs = [(x, y) for x, y in zip(a, b) if x is not None or y is not None]
            else:
                pairs = [(a, b)]
            for x, y in pairs:
                assert type(x) is type(y), key
                if torch.is_tensor(x):
                    torch.testing.assert_close(x, y, **tol, msg=lambda m: f"state {key}: {m}")
                else:
                    assert x == pytest.approx(y, rel=tol["rtol"], abs=tol["atol"]), key


@pytest.mark.parametrize("cfg", INFO.configs, ids=INFO.config_ids())
def test_trajectory_matches_torch(cfg):
    m1, o1, l1 = _run(INFO.cls, cfg)
    m2, o2, l2 = _run(INFO.ref_cls, cfg)
    tol = tol_for(cfg)
    assert l1 == pytest.approx(l2, rel=tol["rtol"], abs=tol["atol"])
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, **tol)
    _assert_state_close(o1, o2, **tol)
    assert l1[-1] < l1[0]


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_low_precision_and_complex_match_torch(line_search_fn):
    cfg = {"line_search_fn": line_search_fn, "history_size": 5}
    for dtype, tol in [(torch.float32, dict(rtol=1e-5, atol=1e-6)), (torch.bfloat16, dict(rtol=1.6e-2, atol=1e-3))]:
        m1, _, _ = _run(INFO.cls, cfg, dtype=dtype)
        m2, _, _ = _run(INFO.ref_cls, cfg, dtype=dtype)
        for a, b in zip(m1.parameters(), m2.parameters()):
            assert a.dtype == dtype
            torch.testing.assert_close(a, b, **tol)

    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 3, dtype=torch.complex128, generator=gen)
    x = torch.randn(8, 5, dtype=torch.complex128, generator=gen)
    target = torch.randn(8, 3, dtype=torch.complex128, generator=gen)
    results = []
    for cls in (INFO.cls, INFO.ref_cls):
        w = w0.clone().requires_grad_()
        opt = cls([w], **cfg)

        def closure():
            opt.zero_grad()
            loss = (x @ w - target).abs().pow(2).mean()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        results.append(w.detach())
    torch.testing.assert_close(results[0], results[1], **TIGHT)


def test_sparse_gradients_are_made_dense_as_in_torch():
    results = []
    for cls in (INFO.cls, INFO.ref_cls):
        emb = nn.Embedding(10, 3, sparse=True).double()
        with torch.no_grad():
            emb.weight.copy_(torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        opt = cls(emb.parameters(), line_search_fn="strong_wolfe")
        ids = torch.tensor([1, 4, 4, 7])

        def closure():
            opt.zero_grad()
            loss = (emb(ids) - 1).pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        results.append(emb.weight.detach())
    torch.testing.assert_close(results[0], results[1], **TIGHT)


def test_state_dict_resume_is_bit_identical_and_interchangeable_with_torch():
    cfg = INFO.configs[-1]
    m_full, _, _ = _run(INFO.cls, cfg, calls=4)
    for src, dst in [(INFO.cls, INFO.cls), (INFO.ref_cls, INFO.cls), (INFO.cls, INFO.ref_cls)]:
        model, o_src, _ = _run(src, cfg, calls=2)
        o_dst = dst(model.parameters(), **cfg)
        o_dst.load_state_dict(_roundtrip(o_src.state_dict()))
        data = make_data()
        for _ in range(2):
            o_dst.step(_closure(model, o_dst, data))
        for a, b in zip(model.parameters(), m_full.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    o1, o2 = INFO.cls(make_model().parameters()), INFO.ref_cls(make_model().parameters())
    assert o1.state_dict()["param_groups"][0].keys() == o2.state_dict()["param_groups"][0].keys()


def test_step_returns_first_loss_and_respects_the_evaluation_budget():
    model = make_model()
    opt = INFO.cls(model.parameters(), line_search_fn="strong_wolfe", max_iter=10, max_eval=12)
    data = make_data()
    calls: list[int] = []
    with torch.no_grad():  # the closure still runs with gradients
        loss = opt.step(_closure(model, opt, data, calls))
    torch.testing.assert_close(loss, loss_fn(make_model(), data))
    # the line search may overshoot the budget by its last bracket evaluation only
    assert 1 < len(calls) <= 12 + 1
    assert opt.state[next(model.parameters())]["func_evals"] == len(calls)


def test_converges_on_rosenbrock_with_strong_wolfe():
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = INFO.cls([xy], line_search_fn="strong_wolfe", history_size=10, max_iter=200,
                   tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        f = rosenbrock(xy)
        f.backward()
        return f

    opt.step(closure)
    torch.testing.assert_close(xy.detach(), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-8)
    assert opt.state[xy]["n_iter"] < 60


def test_closure_is_required_and_one_group_only():
    model = make_model()
    with pytest.raises(RuntimeError, match="LBFGS requires a closure"):
        INFO.cls(model.parameters()).step(None)
    with pytest.raises(ValueError, match="LBFGS doesn't support per-parameter options"):
        INFO.cls([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    opt = INFO.cls(model[0].parameters())
    with pytest.raises(ValueError, match="Invalid params"):
        opt.add_param_group({"params": model[2].parameters()})


def test_deepcopy_continues_identically():
    model, opt, _ = _run(INFO.cls, INFO.configs[-1], calls=2)
    model2, opt2 = copy.deepcopy((model, opt))
    data = make_data()
    opt.step(_closure(model, opt, data))
    opt2.step(_closure(model2, opt2, data))
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- #
# The pieces, against their definitions                                        #
# --------------------------------------------------------------------------- #


def test_two_loop_recursion_is_the_bfgs_inverse_hessian():
    """-H g with H from the BFGS updates H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T."""
    gen = torch.Generator().manual_seed(3)
    n, m = 6, 4
    A = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A = A @ A.T + n * torch.eye(n, dtype=torch.float64)  # a positive definite Hessian
    ss = [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(m)]
    ys = [A @ s for s in ss]
    ro = [1.0 / y.dot(s) for y, s in zip(ys, ss)]
    gamma = ss[-1].dot(ys[-1]) / ys[-1].dot(ys[-1])
    H = gamma * torch.eye(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    for s, y, r in zip(ss, ys, ro):
        H = (eye - r * torch.outer(s, y)) @ H @ (eye - r * torch.outer(y, s)) + r * torch.outer(s, s)
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(lbfgs_direction(g, ys, ss, ro, gamma), -H @ g, rtol=1e-12, atol=1e-12)
    # with no memory it is the scaled gradient step
    torch.testing.assert_close(lbfgs_direction(g, [], [], [], 0.5), -0.5 * g)


def test_cubic_interpolate_finds_the_minimizer_of_a_cubic():
    def f(x):
        return (x - 0.3) ** 2 * (x + 2)  # local minimizer at 0.3

    def df(x):
        return 2 * (x - 0.3) * (x + 2) + (x - 0.3) ** 2

    x1, x2 = torch.tensor(-0.5, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    t = cubic_interpolate(x1, f(x1), df(x1), x2, f(x2), df(x2))
    torch.testing.assert_close(t, torch.tensor(0.3, dtype=torch.float64))
    # clipped to the bounds; the bounds' midpoint when there is no minimizer
    assert cubic_interpolate(x1, f(x1), df(x1), x2, f(x2), df(x2), bounds=(0.5, 1.0)) == 0.5
    two = torch.tensor(2.0, dtype=torch.float64)  # f rises by 1 with slopes 2 at both ends: no minimizer
    assert cubic_interpolate(0.0, 0.0, two, 1.0, 1.0, two, bounds=(0.0, 4.0)) == 2.0


def test_strong_wolfe_returns_a_step_satisfying_both_conditions():
    xy0 = torch.tensor([-1.5, 2.0], dtype=torch.float64)

    def obj_func(x, t, d):
        z = (x + t * d).requires_grad_()
        with torch.enable_grad():
            f = rosenbrock(z)
            f.backward()
        return f.item(), z.grad

    f0, g0 = obj_func(xy0, 0.0, torch.zeros(2, dtype=torch.float64))
    d = -g0
    gtd = g0.dot(d)
    for t0 in (1e-4, 1.0):  # too short (extrapolation) and too long (zoom)
        f, g, t, evals = strong_wolfe(obj_func, xy0, t0, d, f0, g0, gtd)
        assert f <= f0 + 1e-4 * t * gtd  # sufficient decrease
        assert abs(g.dot(d)) <= 0.9 * abs(gtd)  # curvature
        assert 1 <= evals <= 25
        ref = importlib.import_module("torch.optim.lbfgs")._strong_wolfe(obj_func, xy0, t0, d, f0, g0, gtd)
        assert (f, float(t), evals) == (ref[0], float(ref[2]), ref[3])
