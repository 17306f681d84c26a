"""Every optimizer's ``step()`` under ``torch.compile``: one graph, no recompilation, the eager result.

For each optimizer of the catalogue (its first and last configurations and every
one with a tensor learning rate, on the single-tensor and, where the class has
one, the foreach path) a small float32
model takes one eager step (the state is created), then ``STEPS`` steps through
``torch.compile(opt.step, fullgraph=True)``:

* Dynamo's counters must show exactly one graph and no graph break (no
  ``Tensor.item()`` of a step counter, no branch on a tensor's value, no host
  synchronisation), with ``torch.compile``'s defaults as users call it (with
  ``fullgraph=True`` Dynamo would capture ``.item()`` as a symbolic scalar
  instead of breaking, which is not what a default compile does; the criterion
  is the one of ``torch._dynamo.explain``);
* from the second compiled step on, ``torch._dynamo.config.error_on_recompile``
  turns a recompilation into an error (guards that change every step, a shape
  that grows with the state, would fail here);
* an identical model stepped eagerly must end at the same parameters, to
  float32 round-off (compiled code may compute step-dependent scalars such as
  bias corrections in the counters' float32 instead of Python's float64).

The backend is Dynamo's ``"eager"``: the graph is captured exactly as for
inductor and then run op by op, which keeps the test fast on a small machine.
Inductor's code generation is measured by ``benchmarks/compile_audit.py``.

SparseAdam (sparse gradients) and LBFGS (a data-dependent line search inside a
closure) are not plain steps and are not covered, like in ``torch.optim``'s own
compiled-optimizer tests. ``NOT_YET_COMPILE_CLEAN`` lists the optimizers whose
step still has graph breaks (strict xfail: the test says when one is fixed).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import optim_catalogue
from optim_catalogue import CATALOGUE, OptimizerInfo, _config_id, refuses_foreach

STEPS = 8  # RAdam's rectification starts at its sixth step: both branches are covered
ATOL = 1e-5
RTOL = 1e-4

#: a looser tolerance, and why
TOL_OVERRIDES = {
    # compiled, a tensor lr stays a float32 tensor (eagerly: a Python float), and a
    # last-bit change of the step flips bfloat16 roundings in the next steps'
    # Newton-Schulz iterations: about 2^-8 of an update (lr = 1e-3 here)
    "Muon": dict(atol=1e-4, rtol=1e-2),
}

NOT_APPLICABLE = {"SparseAdam", "LBFGS"}
#: optimizers whose step still breaks the graph, and why (strict xfail)
NOT_YET_COMPILE_CLEAN: dict[str, str] = {}

ENTRIES: list[OptimizerInfo] = [
    info for info in CATALOGUE + getattr(optim_catalogue, "MATRIX_ONLY", [])
    if info.name not in NOT_APPLICABLE
]


def _configs(info: OptimizerInfo) -> list[dict[str, Any]]:
    """The catalogue's first configuration, every one with a tensor learning rate, and
    the last one (the entries end with their richest combination of options); one
    configuration for an optimizer that is not yet compile-clean."""
    cfgs = [c for c in info.configs if not c.get("fused") and not c.get("differentiable")]
    if info.name in NOT_YET_COMPILE_CLEAN:
        return cfgs[:1]
    chosen = [cfgs[0]] + [c for c in cfgs[1:-1] if isinstance(c.get("lr"), torch.Tensor)] + cfgs[-1:]
    ids = [_config_id(c) for c in chosen]  # (a dict with a tensor lr compares equal to one with the float)
    return [c for i, c in enumerate(chosen) if ids[i] not in ids[:i]]


def _cases() -> list[Any]:
    cases = []
    for info in ENTRIES:
        has_foreach = "foreach" in inspect.signature(info.cls).parameters
        for cfg in _configs(info):
            variants = [cfg]
            if has_foreach and "foreach" not in cfg and not refuses_foreach(info, cfg):
                variants.append({**cfg, "foreach": True})
            for kwargs in variants:
                marks = []
                if info.name in NOT_YET_COMPILE_CLEAN:
                    marks.append(pytest.mark.xfail(strict=True, reason=NOT_YET_COMPILE_CLEAN[info.name]))
                cases.append(pytest.param(info, kwargs, id=f"{info.name}-{_config_id(kwargs)}", marks=marks))
    return cases


def _model(info: OptimizerInfo) -> torch.nn.Module:
    bias = info not in getattr(optim_catalogue, "MATRIX_ONLY", [])
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16, bias=bias), torch.nn.Tanh(), torch.nn.Linear(16, 4, bias=bias)
    )


def _set_grads(models: list[torch.nn.Module], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 8, generator=gen)
    y = torch.randn(32, 4, generator=gen)
    for m in models:
        m.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(m(x), y).backward()


def _compiled_and_eager(cls: type, kwargs: dict[str, Any], model_info: OptimizerInfo, steps: int,
                        backend: str = "eager") -> tuple[torch.nn.Module, torch.nn.Module, Any, Any]:
    """Two identical models and optimizers; one eager step each (the state is created),
    then ``steps`` steps: one optimizer through ``torch.compile`` (no recompilation allowed
    after its first compiled step), the other eagerly. Dynamo's counters are cleared before
    the compiled steps. Returns (compiled model, eager model, compiled-side optimizer,
    eager optimizer)."""
    torch._dynamo.reset()
    compiled_model = _model(model_info)
    eager_model = copy.deepcopy(compiled_model)
    kwargs_c = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    opt_c = cls(compiled_model.parameters(), **kwargs_c)
    opt_e = cls(eager_model.parameters(), **kwargs)
    models = [compiled_model, eager_model]
    _set_grads(models, 0)
    opt_c.step()
    opt_e.step()

    def call_step() -> None:
        opt_c.step()

    # fullgraph=False, as users compile: with fullgraph=True Dynamo would capture
    # .item() as a symbolic scalar instead of breaking, and hide what users get
    step = torch.compile(call_step, backend=backend)
    counters.clear()
    for k in range(1, steps + 1):
        _set_grads(models, k)
        with torch._dynamo.config.patch(error_on_recompile=k > 1):
            step()
        opt_e.step()
    return compiled_model, eager_model, opt_c, opt_e


def _assert_one_graph() -> None:
    """Since the counters were cleared, the step was compiled (not skipped and run eagerly)
    into exactly one graph, with no graph break."""
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("info, kwargs", _cases())
def test_step_compiles_to_one_graph_and_matches_eager(info: OptimizerInfo, kwargs: dict[str, Any]) -> None:
    compiled_model, eager_model, _, _ = _compiled_and_eager(info.cls, kwargs, info, STEPS)
    _assert_one_graph()
    for p_c, p_e in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p_c, p_e, **TOL_OVERRIDES.get(info.name, dict(atol=ATOL, rtol=RTOL)))


# --------------------------------------------------------------------------- #
# LMAdagrad and FullMatrixAdagrad: a window that fills and wraps while compiled
# --------------------------------------------------------------------------- #

WINDOW_STEPS = 10  # compiled steps: a window of 3 fills (steps 1-2) and wraps three times

WINDOW_CASES = [
    ("LMAdagrad", {"lr": 1e-2, "history_size": 3, "centered": True}),
    ("LMAdagrad", {"lr": torch.tensor(1e-2), "history_size": 3, "momentum": 0.9}),
    ("LMAdagrad", {"lr": torch.tensor(1e-2), "history_size": 3, "momentum": 0.9,
                   "momentum_mode": "update", "update_norm": "graft", "weight_decay": 0.1,
                   "decoupled_weight_decay": True}),
    ("LMAdagrad", {"lr": 1e-2, "history_size": 1, "update_norm": "clip", "weight_decay": 0.1}),
    ("LMAdagrad", {"lr": 1e-2, "history_size": 3, "centered": True, "concatenate": True,
                   "maximize": True}),
    ("FullMatrixAdagrad", {"lr": torch.tensor(0.1), "history_size": 3, "eps": 0.0}),
    ("FullMatrixAdagrad", {"lr": torch.tensor(0.1), "weight_decay": 0.1}),
]


def _window_cases() -> list[Any]:
    return [
        pytest.param(name, {**kwargs, **flag}, id=f"{name}-{_config_id({**kwargs, **flag})}")
        for name, kwargs in WINDOW_CASES
        for flag in ({}, {"foreach": True})
    ]


@pytest.mark.parametrize("name, kwargs", _window_cases())
def test_lm_adagrad_window_compiles_once_and_matches_eager(name: str, kwargs: dict[str, Any]) -> None:
    """The ring buffer keeps one shape while it fills and wraps: one graph from the
    first eager step (one gradient in the window) through three wraps, no
    recompilation, and the eager parameters *and* state (counters, window, Gram
    matrix: the masked k x k form leaves the empty slots' rows at zero, as eagerly)."""
    import optimizers

    compiled_model, eager_model, opt_c, opt_e = _compiled_and_eager(
        getattr(optimizers, name), kwargs, CATALOGUE[0], WINDOW_STEPS)
    _assert_one_graph()
    for p_c, p_e in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p_c, p_e, atol=ATOL, rtol=RTOL)
        s_c, s_e = opt_c.state[p_c], opt_e.state[p_e]
        assert s_c.keys() == s_e.keys()
        for key in s_e:
            torch.testing.assert_close(s_c[key], s_e[key], atol=ATOL, rtol=RTOL, msg=key)


@pytest.mark.parametrize("name", ["LMAdagrad", "FullMatrixAdagrad"])
def test_nonfinite_gradient_under_compile_raises_before_updating(name: str) -> None:
    """Compiled, the non-finite check is a device assertion (no host read): it
    raises before the step changes anything.

    Backend ``aot_eager``: functionalized as for inductor (mutations of the inputs
    are applied after the graph, so a raising graph leaves them untouched, and the
    grad mode the step switched off is restored). Dynamo's ``eager`` debug backend
    runs the traced ops in order and would leave grad mode off after the error.
    """
    import optimizers

    torch._dynamo.reset()
    model = _model(CATALOGUE[0])
    opt = getattr(optimizers, name)(model.parameters(), lr=1e-2, history_size=3)
    _set_grads([model], 0)
    opt.step()
    counters.clear()
    step = torch.compile(opt.step, backend="aot_eager")
    _set_grads([model], 1)
    step()
    _set_grads([model], 2)
    model[2].bias.grad[1] = float("nan")
    before = copy.deepcopy((list(model.parameters()), opt.state_dict()))
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        step()
    assert torch.is_grad_enabled()
    assert not counters["graph_break"], dict(counters["graph_break"])
    after = (list(model.parameters()), opt.state_dict())
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    for i, s in before[1]["state"].items():
        for key, v in s.items():
            assert torch.equal(v, after[1]["state"][i][key]), key


def _degenerate_grad(pattern: str, k: int, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Gradients whose windows are rank-deficient, where the eigenvalue cut-off decides."""
    if pattern == "zero-then-random":
        return torch.zeros(shape, dtype=torch.float64) if k < 3 else torch.randn(shape, generator=gen, dtype=torch.float64)
    if pattern == "constant":
        return torch.ones(shape, dtype=torch.float64)
    # two alternating multiples of one vector: rank 1
    return torch.arange(1.0, 1 + shape.numel(), dtype=torch.float64).reshape(shape) * (1 + k % 2)


@pytest.mark.parametrize("pattern", ["zero-then-random", "constant", "rank-one"])
@pytest.mark.parametrize("name, kwargs", [
    ("LMAdagrad", {"lr": 0.1, "history_size": 3, "eps": 0.0}),
    ("LMAdagrad", {"lr": 0.1, "history_size": 4, "centered": True, "update_norm": "graft"}),
    ("FullMatrixAdagrad", {"lr": 0.1, "history_size": 3, "eps": 0.0}),
], ids=lambda v: _config_id(v) if isinstance(v, dict) else v)
def test_lm_adagrad_degenerate_windows_compiled_match_eager(name: str, kwargs: dict[str, Any],
                                                            pattern: str) -> None:
    """Zero, constant and rank-one windows (and a parameter of one entry, d < k):
    the masked k x k problem (zero rows for the empty slots) drops the same
    exactly-degenerate directions as the eager n x n one and ends at the same
    parameters (float64, to round-off), in one graph."""
    import optimizers

    cls = getattr(optimizers, name)
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(3)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(5,), (1,), (2, 3)]]
    qs = [p.clone() for p in ps]
    opt_c, opt_e = cls(ps, **kwargs), cls(qs, **kwargs)

    def fill(k: int) -> None:
        for p, q in zip(ps, qs):
            g = _degenerate_grad(pattern, k, p.shape, gen)
            p.grad, q.grad = g, g.clone()

    fill(0)
    opt_c.step()
    opt_e.step()
    step = torch.compile(opt_c.step, backend="eager")
    counters.clear()
    for k in range(1, 9):
        fill(k)
        with torch._dynamo.config.patch(error_on_recompile=k > 1):
            step()
        opt_e.step()
    _assert_one_graph()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-12)


def test_shampoo_under_inductor_matches_eager() -> None:
    """Inductor itself (not only Dynamo's graph): torch 2.13's CPU inductor turns
    ``W.add_(A @ B, alpha=c)`` into a fused matrix product that loses ``c``; Shampoo's
    single-tensor update (a product of matrices added with ``alpha=-lr``) scales the
    product first while compiling. With a refresh at every step the run is well
    conditioned, so compiled and eager agree to float32 round-off."""
    info = next(i for i in ENTRIES if i.name == "Shampoo")
    compiled_model, eager_model, _, _ = _compiled_and_eager(info.cls, {"lr": 0.1}, info, 3, backend="inductor")
    for p_c, p_e in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p_c, p_e, atol=ATOL, rtol=RTOL)
