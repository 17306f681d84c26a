"""The optimizers added to match the rest of ``torch.optim`` (RAdam, Rprop, ASGD,
Adafactor, SparseAdam, LBFGS): what the shared catalogue tests do not reach.

* torch's own error inputs (``optim_error_inputs_func_*`` in
  ``torch/testing/_internal/common_optimizers.py``, transcribed in the
  catalogue as ``torch_error_inputs``, because that module needs torch's test
  dependencies): our message matches torch's ``error_regex``, and torch's
  class raises it too (so the transcription is right);
* the functional cores against torch's functionals, both paths;
* random shapes, dtypes and configurations (hypothesis) against torch.optim.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import optimizers
from optim_catalogue import CATALOGUE
from test_functional import SHAPES, _random, _steps, _zeros
from test_properties import SETTINGS, _run, _single_intra_op_thread, betas, lrs, shapes, small_wd  # noqa: F401

NEW = [i for i in CATALOGUE if i.torch_error_inputs]


def _params():
    return [torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64))]


def _torch_error_cases():
    return [
        pytest.param(info, kwargs, regex, id=f"{info.name}-{regex[:40]}")
        for info in NEW
        for kwargs, regex in info.torch_error_inputs
    ]


@pytest.mark.parametrize("info,kwargs,regex", _torch_error_cases())
def test_torch_error_inputs_raise_torch_phrase(info, kwargs, regex):
    with pytest.raises(ValueError, match=regex):
        info.ref_cls(_params(), **kwargs)
    with pytest.raises(ValueError, match=regex) as err:
        info.cls(_params(), **kwargs)
    assert "Invalid" in str(err.value) and "must" in str(err.value)  # the package's own form too


# --------------------------------------------------------------------------- #
# Functional cores                                                             #
# --------------------------------------------------------------------------- #


def _torch_functional(name: str):
    return getattr(importlib.import_module(f"torch.optim.{name}"), name)


# name: (module, torch functional name, state lists factory, hyperparameters accepted by both)
FUNCTIONAL_SPECS = {
    "radam": ("radam", "radam", lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
              dict(lr=1e-2, beta1=0.9, beta2=0.9, eps=1e-8, weight_decay=0.01, maximize=False)),
    "radam_decoupled": ("radam", "radam", lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
                        dict(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1,
                             decoupled_weight_decay=True, maximize=True)),
    "rprop": ("rprop", "rprop", lambda ps: [_zeros(ps), [torch.full_like(p, 0.05) for p in ps], _steps(ps)],
              dict(step_size_min=1e-3, step_size_max=0.2, etaminus=0.4, etaplus=1.3, maximize=True)),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("name", list(FUNCTIONAL_SPECS))
def test_functional_matches_torch_functional(name, foreach):
    module, torch_name, make_state, hyper = FUNCTIONAL_SPECS[name]
    ours_fn = getattr(importlib.import_module(f"optimizers.{module}"), module)
    torch_fn = _torch_functional(torch_name)
    p_ours, p_ref = _random(SHAPES, 0), _random(SHAPES, 0)
    s_ours, s_ref = make_state(p_ours), make_state(p_ref)
    for step in range(12):
        grads = _random(SHAPES, 100 + step)
        before = [g.clone() for g in grads]
        ours_fn(p_ours, grads, *s_ours, foreach=foreach, **hyper)
        torch_fn(p_ref, [g.clone() for g in grads], *s_ref, foreach=foreach, **hyper)
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, before))  # gradients untouched
    for a, b in zip(p_ours, p_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for la, lb in zip(s_ours, s_ref):
        for a, b in zip(la, lb):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- #
# Random problems (hypothesis)                                                 #
# --------------------------------------------------------------------------- #

CONFIGS = {
    "RAdam": st.fixed_dictionaries(dict(
        lr=lrs, betas=betas, eps=st.sampled_from([1e-8, 1e-6]), weight_decay=small_wd,
        decoupled_weight_decay=st.booleans(), maximize=st.booleans())),
    "Rprop": st.fixed_dictionaries(dict(
        lr=lrs, etas=st.tuples(st.floats(0.1, 0.9), st.floats(1.01, 2.0)),
        step_sizes=st.tuples(st.sampled_from([0.0, 1e-6, 1e-3]), st.sampled_from([1e-2, 50.0])),
        maximize=st.booleans())),
}



@st.composite
def problems(draw, name):
    return dict(
        name=name,
        config=draw(CONFIGS[name]),
        shapes=draw(shapes),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        steps=draw(st.integers(1, 8)),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
@SETTINGS
@given(data=st.data(), foreach=st.booleans())
def test_random_problems_match_torch_optim(name, data, foreach):
    problem = data.draw(problems(name))
    ours, o1 = _run(getattr(optimizers, problem["name"]), problem, foreach)
    ref, o2 = _run(getattr(torch.optim, problem["name"]), problem, foreach)
    tol = dict(rtol=1e-4, atol=1e-5) if problem["dtype"] == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for a, b in zip(ours, ref):
        assert a.dtype == problem["dtype"]
        torch.testing.assert_close(a, b, **tol)
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].keys() == s2[k].keys()
        for key in s1[k]:
            torch.testing.assert_close(s1[k][key], s2[k][key], **tol)
