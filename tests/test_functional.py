"""The functional cores (``optimizers.<module>.<name>``), tested without the classes.

Each functional is called on hand-made parameter, gradient and state lists and
compared with ``torch.optim``'s functional of the same name (which takes the
same lists and the same hyperparameter keywords), for both code paths.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from optimizers import adadelta, adafactor, adagrad, adam, adamax, asgd, nadam, radam, rmsprop, rprop, sgd


def _torch_functional(name: str, module: str | None = None):
    # torch.optim's package namespace hides some submodules behind the
    # classes' names, so import the module by its full name.
    return getattr(importlib.import_module(f"torch.optim.{module or name}"), name)


@pytest.fixture(autouse=True, scope="module")
def _single_intra_op_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SHAPES = [(3, 4), (5,), (), (2, 3, 2)]


def _zeros(ps):
    return [torch.zeros_like(p) for p in ps]


def _steps(ps):
    return [torch.tensor(0.0) for _ in ps]


def _ones_scalar(ps):
    return [torch.tensor(1.0) for _ in ps]


def _adafactor_state(ps):
    """Row and column variances for matrices (and higher), a full variance otherwise."""
    rows = [p.new_zeros(p.shape[:-1] + (1,)) if p.dim() > 1 else None for p in ps]
    cols = [p.new_zeros(p.shape[:-2] + (1, p.shape[-1])) if p.dim() > 1 else None for p in ps]
    return [rows, cols, [None if p.dim() > 1 else torch.zeros_like(p) for p in ps], _steps(ps)]


# name: (ours, torch's, state lists factory, hyperparameters accepted by both)
SPECS = {
    "sgd": (sgd.sgd, _torch_functional("sgd"), lambda ps: [[None] * len(ps)],
            dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False, maximize=False)),
    "sgd_nesterov": (sgd.sgd, _torch_functional("sgd"), lambda ps: [[None] * len(ps)],
                     dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True, maximize=True)),
    "adagrad": (adagrad.adagrad, _torch_functional("adagrad"), lambda ps: [_zeros(ps), _steps(ps)],
                dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, eps=1e-10, maximize=False)),
    "rmsprop": (rmsprop.rmsprop, _torch_functional("rmsprop"),
                lambda ps: [_zeros(ps), _zeros(ps), _zeros(ps), _steps(ps)],
                dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.01, momentum=0.9, centered=True, maximize=False)),
    "adadelta": (adadelta.adadelta, _torch_functional("adadelta"),
                 lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
                 dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.01, maximize=True)),
    "adam": (adam.adam, _torch_functional("adam"),
             lambda ps: [_zeros(ps), _zeros(ps), _zeros(ps), _steps(ps)],
             dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01, amsgrad=True, maximize=False)),
    "adam_decoupled": (adam.adam, _torch_functional("adam"),
                       lambda ps: [_zeros(ps), _zeros(ps), [], _steps(ps)],
                       dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=False,
                            maximize=True, decoupled_weight_decay=True)),
    "nadam": (nadam.nadam, _torch_functional("nadam"),
              lambda ps: [_zeros(ps), _zeros(ps), _ones_scalar(ps), _steps(ps)],
              dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01, momentum_decay=4e-3,
                   decoupled_weight_decay=False, maximize=False)),
    "adamax": (adamax.adamax, _torch_functional("adamax"),
               lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
               dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01, maximize=True)),
    # beta2 small enough that the rectified phase starts within the steps below
    "radam": (radam.radam, _torch_functional("radam"), lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
              dict(lr=1e-2, beta1=0.9, beta2=0.9, eps=1e-8, weight_decay=0.01, maximize=False)),
    "radam_decoupled": (radam.radam, _torch_functional("radam"), lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
                        dict(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1,
                             decoupled_weight_decay=True, maximize=True)),
    "rprop": (rprop.rprop, _torch_functional("rprop"),
              lambda ps: [_zeros(ps), [torch.full_like(p, 0.05) for p in ps], _steps(ps)],
              dict(step_size_min=1e-3, step_size_max=0.2, etaminus=0.4, etaplus=1.3, maximize=True)),
    "asgd": (asgd.asgd, _torch_functional("asgd"),
             lambda ps: [_zeros(ps), [torch.tensor(1.0) for _ in ps], [torch.tensor(0.05) for _ in ps], _steps(ps)],
             dict(lr=0.05, lambd=1e-2, alpha=0.6, t0=4, weight_decay=0.01, maximize=True)),
    "adafactor": (adafactor.adafactor, _torch_functional("adafactor", "_adafactor"), _adafactor_state,
                  dict(lr=0.05, beta2_decay=-0.6, eps1=None, eps2=1e-3, d=1.2, weight_decay=0.1, maximize=True)),
}

# enough steps for RAdam's rectified phase and ASGD's averaging (t0 above) to run
FUNCTIONAL_STEPS = 12


def _random(shapes, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("name", list(SPECS))
def test_functional_matches_torch_functional(name, foreach):
    ours_fn, torch_fn, make_state, hyper = SPECS[name]
    p_ours, p_ref = _random(SHAPES, 0), _random(SHAPES, 0)
    s_ours, s_ref = make_state(p_ours), make_state(p_ref)
    for step in range(FUNCTIONAL_STEPS):
        grads = _random(SHAPES, 100 + step)
        before = [g.clone() for g in grads]
        ours_fn(p_ours, grads, *s_ours, foreach=foreach, **hyper)
        torch_fn(p_ref, [g.clone() for g in grads], *s_ref, foreach=foreach, **hyper)
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, before))  # gradients untouched
    for a, b in zip(p_ours, p_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for la, lb in zip(s_ours, s_ref):
        for a, b in zip(la, lb):
            if a is None:  # Adafactor: factored or full variance, by dimension
                assert b is None
            else:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(SPECS))
def test_functional_does_not_modify_gradients(name):
    ours_fn, _, make_state, hyper = SPECS[name]
    for foreach in (False, True):
        params = _random(SHAPES, 0)
        grads = _random(SHAPES, 1)
        before = [g.clone() for g in grads]
        ours_fn(params, grads, *make_state(params), foreach=foreach, **hyper)
        for g, g0 in zip(grads, before):
            assert torch.equal(g, g0)


def test_sgd_functional_creates_missing_buffers_in_place():
    params, grads = _random(SHAPES, 0), _random(SHAPES, 1)
    bufs = [None] * len(params)
    sgd.sgd(params, grads, bufs, lr=0.1, momentum=0.9)
    for b, g in zip(bufs, grads):
        assert torch.equal(b, g)  # m_1 = g_1


def test_sgd_functional_without_momentum_accepts_empty_buffer_list():
    params, grads = _random(SHAPES, 0), _random(SHAPES, 1)
    expected = [p - 0.1 * g for p, g in zip(params, grads)]
    sgd.sgd(params, grads, [], lr=0.1)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e)


def test_adamw_functional_is_adam_with_decoupled_weight_decay():
    p1, p2 = _random(SHAPES, 0), _random(SHAPES, 0)
    s1, s2 = [_zeros(p1), _zeros(p1), [], _steps(p1)], [_zeros(p2), _zeros(p2), [], _steps(p2)]
    for step in range(3):
        grads = _random(SHAPES, 10 + step)
        adam.adamw(p1, grads, *s1, lr=1e-2)
        adam.adam(p2, grads, *s2, lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)


def test_functional_rejects_python_number_steps():
    params, grads = _random(SHAPES, 0), _random(SHAPES, 1)
    with pytest.raises(TypeError, match="state_steps"):
        adam.adam(params, grads, _zeros(params), _zeros(params), [], [0.0] * len(params))


def test_fused_adam_functional_matches_torch():
    p1, p2 = _random(SHAPES, 0, torch.float32), _random(SHAPES, 0, torch.float32)
    s1 = [_zeros(p1), _zeros(p1), [], [torch.zeros((), dtype=torch.float32) for _ in p1]]
    s2 = [_zeros(p2), _zeros(p2), [], [torch.zeros((), dtype=torch.float32) for _ in p2]]
    for step in range(3):
        grads = _random(SHAPES, 10 + step, torch.float32)
        adam.adam(p1, grads, *s1, lr=1e-2, weight_decay=0.1, fused=True)
        _torch_functional("adam")(p2, grads, *s2, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                              weight_decay=0.1, amsgrad=False, maximize=False, fused=True)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)


def test_fused_sgd_with_some_buffers_missing_matches_single_tensor():
    """A parameter whose momentum buffer starts later (e.g. unfrozen after some
    steps) gets m_1 = g_1 while the others continue: the fused path splits the
    kernel call by is_first_step."""
    p1, p2 = _random(SHAPES, 0), _random(SHAPES, 0)
    b1, b2 = [None] * len(p1), [None] * len(p2)
    for step in range(4):
        grads = _random(SHAPES, 20 + step)
        k = len(SHAPES) if step >= 2 else 2  # the last params join at step 2
        hyper = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
        sub_b1, sub_b2 = b1[:k], b2[:k]
        sgd.sgd(p1[:k], grads[:k], sub_b1, fused=True, **hyper)
        sgd.sgd(p2[:k], grads[:k], sub_b2, foreach=False, **hyper)
        b1[:k], b2[:k] = sub_b1, sub_b2
    for a, b in zip(p1 + b1, p2 + b2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
