"""``differentiable=True``: autograd through the optimizer step.

For every class that mirrors a ``torch.optim`` class, torch's own check
(``TestDifferentiableOptimizer`` in torch's ``test/optim/test_optim.py``):
``torch.autograd.gradcheck`` in float64 through one and two steps, with
respect to the initial parameter, the gradient and the state tensors. Then the
derivatives through the step must equal those obtained through
``torch.optim``'s class with ``differentiable=True``. Finally, the
implementation switches that cannot record autograd refuse it with torch's
error, and the package's classes without a torch.optim counterpart refuse
``differentiable=True`` with a message saying so.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import optimizers

DT = torch.float64
SHAPE = (2, 3)


def _t(seed: int, kind: str = "t") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(SHAPE, generator=g, dtype=DT)
    return {"t": 2 * x - 1, "pos": x + 0.1, "big": x + 1.5}[kind]


def _step(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=DT)


# (class name, kwargs, state: {key: (kind, seed)}); kind "t" = any real tensor,
# "pos" = a positive one (second moments, step sizes), "big" = one above 1.5 (a
# second moment that stays above the squared mean), "step" = a step counter
# (a tensor that does not require grad, as in torch's test).
CASES = [
    ("SGD", dict(lr=0.9, momentum=0.9, dampening=0.1, weight_decay=0.1), {"momentum_buffer": ("t", 1)}),
    ("SGD", dict(lr=0.9, momentum=0.9, nesterov=True, maximize=True), {"momentum_buffer": ("t", 1)}),
    ("SGD", dict(lr=0.9), {}),
    ("Adagrad", dict(lr=0.9, weight_decay=0.1, lr_decay=0.01), {"sum": ("pos", 1), "step": ("step", 10.0)}),
    ("Adagrad", dict(lr=0.9, maximize=True), {"sum": ("pos", 1), "step": ("step", 10.0)}),
    ("RMSprop", dict(lr=0.9, alpha=0.9, weight_decay=0.1), {"square_avg": ("pos", 1), "step": ("step", 10.0)}),
    ("RMSprop", dict(lr=0.9, momentum=0.9, centered=True, maximize=True),
     {"square_avg": ("big", 1), "momentum_buffer": ("t", 2), "grad_avg": ("t", 3), "step": ("step", 10.0)}),
    ("Adadelta", dict(lr=0.9, rho=0.8, weight_decay=0.1),
     {"square_avg": ("pos", 1), "acc_delta": ("pos", 2), "step": ("step", 10.0)}),
    ("Adadelta", dict(lr=0.9, maximize=True),
     {"square_avg": ("pos", 1), "acc_delta": ("pos", 2), "step": ("step", 10.0)}),
    ("Adam", dict(lr=0.9, weight_decay=0.1), {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "step": ("step", 10.0)}),
    ("Adam", dict(lr=0.9, amsgrad=True, maximize=True),
     {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "max_exp_avg_sq": ("pos", 3), "step": ("step", 10.0)}),
    ("AdamW", dict(lr=0.9, weight_decay=0.1), {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "step": ("step", 10.0)}),
    ("AdamW", dict(lr=0.9, amsgrad=True),
     {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "max_exp_avg_sq": ("pos", 3), "step": ("step", 10.0)}),
    ("NAdam", dict(lr=0.9, weight_decay=0.1),
     {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "step": ("step", 10.0), "mu_product": ("step", 1.0)}),
    ("NAdam", dict(lr=0.9, decoupled_weight_decay=True, weight_decay=0.1, maximize=True),
     {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "step": ("step", 10.0), "mu_product": ("step", 1.0)}),
    ("Adamax", dict(lr=0.9, weight_decay=0.1), {"exp_avg": ("t", 1), "exp_inf": ("pos", 2), "step": ("step", 10.0)}),
    ("Adamax", dict(lr=0.9, maximize=True), {"exp_avg": ("t", 1), "exp_inf": ("pos", 2), "step": ("step", 10.0)}),
    ("RAdam", dict(lr=0.9, weight_decay=0.1), {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "step": ("step", 10.0)}),
    ("RAdam", dict(lr=0.9, decoupled_weight_decay=True, weight_decay=0.1, maximize=True),
     {"exp_avg": ("t", 1), "exp_avg_sq": ("pos", 2), "step": ("step", 3.0)}),
    ("Rprop", dict(lr=0.9), {"prev": ("t", 1), "step_size": ("pos", 2), "step": ("step", 10.0)}),
    ("Rprop", dict(lr=0.9, maximize=True), {"prev": ("t", 1), "step_size": ("pos", 2), "step": ("step", 10.0)}),
    ("ASGD", dict(lr=0.9, weight_decay=0.1, t0=5),
     {"eta": ("step", 0.9), "mu": ("step", 1.0), "ax": ("t", 1), "step": ("step", 10.0)}),
    ("ASGD", dict(lr=0.9, maximize=True, t0=20),
     {"eta": ("step", 0.9), "mu": ("step", 1.0), "ax": ("t", 1), "step": ("step", 10.0)}),
]


def _make_state(spec: dict) -> dict[str, torch.Tensor]:
    state = {}
    for key, (kind, arg) in spec.items():
        if kind == "step":
            state[key] = _step(arg)
        else:
            state[key] = _t(100 + int(arg), kind).requires_grad_(True)
    return state


def _diff_fn(p, grad, state, cls, kwargs, n_steps, *ignored):
    """torch's ``_diff_fn``: a cloned parameter, the gradient as given, the state
    cloned and planted; ``n_steps`` steps; the parameter and the state tensors
    that require grad (by key, so that two classes can be compared)."""
    p = p.clone()
    p.grad = grad
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    opt = cls([p], differentiable=True, **kwargs)
    opt.state[p].update(state)
    for _ in range(n_steps):
        opt.step()
    st = opt.state[p]
    return (p,) + tuple(
        st[k] for k in sorted(st) if isinstance(st[k], torch.Tensor) and st[k].requires_grad
    )


def _inputs(spec):
    p = _t(1).requires_grad_(True)
    grad = _t(2).requires_grad_(True)
    state = _make_state(spec)
    return p, grad, state


def _ids(case):
    name, kwargs, _ = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("n_steps", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_gradcheck_through_the_step(case, n_steps):
    name, kwargs, spec = case
    p, grad, state = _inputs(spec)
    cls = getattr(optimizers, name)
    # gradcheck sees the state tensors as inputs through the trailing arguments
    assert gradcheck(
        _diff_fn,
        (p, grad, state, cls, kwargs, n_steps, *state.values()),
        check_batched_grad=False,
    )


@pytest.mark.parametrize("n_steps", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_derivatives_equal_torch_optim(case, n_steps):
    name, kwargs, spec = case
    results = []
    for cls in (getattr(optimizers, name), getattr(torch.optim, name)):
        p, grad, state = _inputs(spec)
        leaves = [p, grad] + [v for v in state.values() if v.requires_grad]
        outs = _diff_fn(p, grad, state, cls, kwargs, n_steps)
        # a fixed random weighting of the outputs: one vector-Jacobian product
        gen = torch.Generator().manual_seed(7)
        weights = [torch.randn(o.shape, generator=gen, dtype=DT) for o in outs]
        loss = sum((w * o).sum() for w, o in zip(weights, outs))
        try:
            derivs = torch.autograd.grad(loss, leaves, allow_unused=True)
        except RuntimeError as err:
            # torch.optim's own in-place state updates break its second step here
            # (the package clones what autograd saves, so its gradcheck passes)
            if cls.__module__.startswith("torch.optim") and n_steps > 1 and "inplace" in str(err):
                pytest.skip(f"torch.optim.{name} cannot differentiate through two steps here")
            raise
        results.append(
            ([o.detach() for o in outs], [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, derivs)])
        )
    (ours_out, ours_d), (ref_out, ref_d) = results
    assert len(ours_out) == len(ref_out)
    for a, b in zip(ours_out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(ours_d, ref_d):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


SUPPORTED = sorted({c[0] for c in CASES})
FUSED = ["SGD", "Adagrad", "Adam", "AdamW"]  # the classes torch ships a fused kernel for


def _param():
    p = torch.randn(SHAPE, dtype=DT, requires_grad=True).clone()
    p.grad = torch.randn(SHAPE, dtype=DT)
    return p


@pytest.mark.parametrize("name", FUSED)
def test_fused_refuses_differentiable_with_torchs_error(name):
    regex = "`fused` does not support `differentiable`"
    for cls in (getattr(torch.optim, name), getattr(optimizers, name)):
        with pytest.raises(RuntimeError, match=regex):
            cls([torch.nn.Parameter(torch.zeros(2))], fused=True, differentiable=True)


@pytest.mark.parametrize("name", [n for n in SUPPORTED if n != "SGD"])
def test_foreach_refuses_differentiable_with_torchs_error(name):
    """torch.optim raises ``AssertionError("_foreach ops don't support autograd")``
    at the step; the package's error is that AssertionError and a RuntimeError.
    (torch.optim.SGD accepts the pair: see the next test.)"""
    for cls in (getattr(torch.optim, name), getattr(optimizers, name)):
        opt = cls([_param()], foreach=True, differentiable=True)
        with pytest.raises(AssertionError, match="_foreach ops don't support autograd"):
            opt.step()
    with pytest.raises(RuntimeError, match="Invalid foreach"):
        getattr(optimizers, name)([_param()], foreach=True, differentiable=True).step()


@pytest.mark.parametrize("name", SUPPORTED)
def test_differentiable_step_equals_the_plain_step(name):
    """Recording the step changes nothing in its values: same trajectory as
    ``differentiable=False`` over a few steps (float64)."""
    kwargs = next(c[1] for c in CASES if c[0] == name)
    cls = getattr(optimizers, name)
    base = _t(1).requires_grad_(True)
    trajectories = []
    for differentiable in (False, True):
        p = base.detach().clone().requires_grad_(True) if not differentiable else base.clone()
        opt = cls([p], differentiable=differentiable, **kwargs)
        for k in range(3):
            p.grad = _t(10 + k)
            opt.step()
        trajectories.append(p.detach())
    torch.testing.assert_close(trajectories[0], trajectories[1], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", SUPPORTED)
def test_a_hyperparameter_that_requires_grad_is_refused(name):
    """The derivative with respect to lr is not implemented: a clear error, not a
    silently missing derivative."""
    lr = torch.tensor(0.1, dtype=DT, requires_grad=True)
    opt = getattr(optimizers, name)([_param()], lr=lr, differentiable=True)
    with pytest.raises(RuntimeError, match="Invalid lr: a Tensor that requires grad"):
        opt.step()


@pytest.mark.parametrize(
    "name", ["A2Grad", "LMAdagrad", "FullMatrixAdagrad", "Lion", "SophiaG", "Yogi"]
)
def test_classes_without_a_torch_counterpart_refuse_differentiable(name):
    with pytest.raises(ValueError, match="Invalid differentiable: True"):
        getattr(optimizers, name)([torch.nn.Parameter(torch.zeros(3, 3))], differentiable=True)


@pytest.mark.parametrize("name", ["Shampoo", "SOAP", "Muon"])
def test_classes_without_the_argument_refuse_it_as_torch_muon_does(name):
    """torch.optim.Muon has no ``differentiable`` argument (a TypeError); neither
    do the package's Muon, Shampoo and SOAP."""
    with pytest.raises(TypeError, match="differentiable"):
        torch.optim.Muon([torch.nn.Parameter(torch.zeros(3, 3))], differentiable=True)
    with pytest.raises(TypeError, match="differentiable"):
        getattr(optimizers, name)([torch.nn.Parameter(torch.zeros(3, 3))], differentiable=True)


def test_sgd_foreach_differentiable_matches_torch():
    """torch.optim.SGD runs its foreach step under autograd; the package's SGD
    accepts the pair too and gives the same derivatives (single-tensor path)."""
    kwargs = dict(lr=0.9, momentum=0.9, foreach=True)  # (torch fails with weight decay here)
    spec = {"momentum_buffer": ("t", 1)}
    derivs = []
    for cls in (optimizers.SGD, torch.optim.SGD):
        p, grad, state = _inputs(spec)
        outs = _diff_fn(p, grad, state, cls, kwargs, 1)
        loss = sum((o * (k + 1)).sum() for k, o in enumerate(outs))
        derivs.append(torch.autograd.grad(loss, [p, grad, state["momentum_buffer"]]))
    for a, b in zip(*derivs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
