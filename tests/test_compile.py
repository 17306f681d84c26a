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
from optim_catalogue import CATALOGUE, OptimizerInfo, _config_id

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
NOT_YET_COMPILE_CLEAN = {
    "LMAdagrad": "the history window grows with the step (new shapes until it is full) and its "
                 "bookkeeping reads counters on the host",
    "FullMatrixAdagrad": "the d x d eigendecomposition path reads counters on the host",
}

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
    return [c for i, c in enumerate(chosen) if c not in chosen[:i]]


def _cases() -> list[Any]:
    cases = []
    for info in ENTRIES:
        has_foreach = "foreach" in inspect.signature(info.cls).parameters
        for cfg in _configs(info):
            variants = [cfg]
            if has_foreach and "foreach" not in cfg:
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


@pytest.mark.parametrize("info, kwargs", _cases())
def test_step_compiles_to_one_graph_and_matches_eager(info: OptimizerInfo, kwargs: dict[str, Any]) -> None:
    torch._dynamo.reset()
    compiled_model = _model(info)
    eager_model = copy.deepcopy(compiled_model)
    kwargs_c = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    opt_c = info.cls(compiled_model.parameters(), **kwargs_c)
    opt_e = info.cls(eager_model.parameters(), **kwargs)
    models = [compiled_model, eager_model]

    _set_grads(models, 0)
    opt_c.step()
    opt_e.step()

    def call_step() -> None:
        opt_c.step()

    # fullgraph=False, as users compile: with fullgraph=True Dynamo would capture
    # .item() as a symbolic scalar instead of breaking, and hide what users get
    step = torch.compile(call_step, backend="eager")
    counters.clear()
    for k in range(1, STEPS + 1):
        _set_grads(models, k)
        if k == 1:
            step()
        else:
            with torch._dynamo.config.patch(error_on_recompile=True):
                step()
        opt_e.step()
    # the step was compiled (not skipped and run eagerly): one graph, no break
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    for p_c, p_e in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p_c, p_e, **TOL_OVERRIDES.get(info.name, dict(atol=ATOL, rtol=RTOL)))
