"""The optimizers added to match the rest of ``torch.optim`` (RAdam, Rprop, ASGD,
Adafactor, SparseAdam, LBFGS): what the shared catalogue tests do not reach.

* torch's own error inputs (``optim_error_inputs_func_*`` in
  ``torch/testing/_internal/common_optimizers.py``, transcribed in the
  catalogue as ``torch_error_inputs``, because that module needs torch's test
  dependencies): our message matches torch's ``error_regex``, and torch's
  class raises it too (so the transcription is right);
* the functional cores against torch's functionals, both paths;
* random shapes, dtypes and configurations (hypothesis) against torch.optim;
* the shared tests of tests/test_optimizers.py on the catalogue's
  ``SHARED_PENDING`` entries (see there why): the same test functions, with
  the entry's ``paths_tol`` where the two paths are compared, torch's dtype
  cast on loading a state dict allowed for, and a refusal of complex
  parameters where the entry (and torch) does not support them.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import optimizers
import test_optimizers as shared
from optim_catalogue import CATALOGUE, OWN_TESTS, SHARED_PENDING
from test_functional import SHAPES, _random, _steps, _zeros
from test_properties import SETTINGS, _run, _single_intra_op_thread, betas, lrs, shapes, small_wd  # noqa: F401

NEW = [i for i in CATALOGUE + SHARED_PENDING + OWN_TESTS if i.torch_error_inputs]


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


def _adafactor_state(ps):
    """Row and column variances for matrices (and higher), a full variance otherwise."""
    rows = [p.new_zeros(p.shape[:-1] + (1,)) if p.dim() > 1 else None for p in ps]
    cols = [p.new_zeros(p.shape[:-2] + (1, p.shape[-1])) if p.dim() > 1 else None for p in ps]
    return [rows, cols, [None if p.dim() > 1 else torch.zeros_like(p) for p in ps], _steps(ps)]


# name: (module, torch's module, state lists factory, hyperparameters accepted by both)
FUNCTIONAL_SPECS = {
    "radam": ("radam", "radam", lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
              dict(lr=1e-2, beta1=0.9, beta2=0.9, eps=1e-8, weight_decay=0.01, maximize=False)),
    "radam_decoupled": ("radam", "radam", lambda ps: [_zeros(ps), _zeros(ps), _steps(ps)],
                        dict(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1,
                             decoupled_weight_decay=True, maximize=True)),
    "rprop": ("rprop", "rprop", lambda ps: [_zeros(ps), [torch.full_like(p, 0.05) for p in ps], _steps(ps)],
              dict(step_size_min=1e-3, step_size_max=0.2, etaminus=0.4, etaplus=1.3, maximize=True)),
    "asgd": ("asgd", "asgd",
             lambda ps: [_zeros(ps), [torch.tensor(1.0) for _ in ps], [torch.tensor(0.05) for _ in ps], _steps(ps)],
             dict(lr=0.05, lambd=1e-2, alpha=0.6, t0=4, weight_decay=0.01, maximize=True)),
    "adafactor": ("adafactor", "_adafactor", lambda ps: _adafactor_state(ps),
                  dict(lr=0.05, beta2_decay=-0.6, eps1=None, eps2=1e-3, d=1.2, weight_decay=0.1, maximize=True)),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("name", list(FUNCTIONAL_SPECS))
def test_functional_matches_torch_functional(name, foreach):
    module, torch_name, make_state, hyper = FUNCTIONAL_SPECS[name]
    ours_fn = getattr(importlib.import_module(f"optimizers.{module}"), module)
    torch_fn = getattr(importlib.import_module(f"torch.optim.{torch_name}"), module)
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
            if a is not None:
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
    "ASGD": st.fixed_dictionaries(dict(
        lr=lrs, lambd=st.sampled_from([0.0, 1e-4, 0.1]), alpha=st.floats(0.5, 1.0),
        t0=st.sampled_from([0.0, 2.0, 1e6]), weight_decay=small_wd, maximize=st.booleans())),
    "Adafactor": st.fixed_dictionaries(dict(
        lr=lrs, beta2_decay=st.sampled_from([-0.8, -1.0, -0.5]),
        eps=st.tuples(st.sampled_from([None, 1e-30, 1e-3]), st.sampled_from([1e-3, 1e-2])),
        d=st.sampled_from([1.0, 1.5]), weight_decay=small_wd, maximize=st.booleans())),
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


# --------------------------------------------------------------------------- #
# The shared tests on SHARED_PENDING entries                                   #
# --------------------------------------------------------------------------- #

FOREACH = pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
INFO = pytest.mark.parametrize("info", SHARED_PENDING, ids=lambda i: i.name)
# construction-level tests also take the entries that have their own test files
INFO_ALL = pytest.mark.parametrize("info", SHARED_PENDING + OWN_TESTS, ids=lambda i: i.name)
INFO_CFG = pytest.mark.parametrize(
    "info,cfg",
    [(i, c) for i in SHARED_PENDING for c in i.configs],
    ids=[f"{i.name}-{_id}" for i in SHARED_PENDING for _id in i.config_ids()],
)


@FOREACH
@INFO_CFG
def test_pending_trajectory_matches_torch(info, cfg, foreach):
    shared.test_trajectory_matches_torch(info, cfg, foreach)


@INFO_CFG
def test_pending_foreach_close_to_single_tensor(info, cfg):
    if info.paths_tol is not None:
        tol = info.paths_tol
    else:  # the shared test's tolerances
        tol = shared.TENSOR_LR if isinstance(cfg.get("lr"), torch.Tensor) else dict(rtol=1e-9, atol=1e-11)
    m1, m2 = shared.make_model(), shared.make_model()
    o1 = info.cls(m1.parameters(), **cfg, foreach=False)
    o2 = info.cls(m2.parameters(), **cfg, foreach=True)
    shared.train(m1, o1, 50)
    shared.train(m2, o2, 50)
    shared.assert_params_close(m1.parameters(), m2.parameters(), **tol)
    shared.assert_state_close(o1, o2, **tol)
    if info.paths_tol is not None:  # torch's own two paths part by as much
        r1, r2 = shared.make_model(), shared.make_model()
        shared.train(r1, info.ref_cls(r1.parameters(), **shared.ref_kwargs(cfg, False)), 50)
        shared.train(r2, info.ref_cls(r2.parameters(), **shared.ref_kwargs(cfg, True)), 50)
        shared.assert_params_close(r1.parameters(), r2.parameters(), **info.paths_tol)


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@INFO
def test_pending_state_dict_interchangeable_with_torch(info, direction):
    if direction == "torch_to_ours" or info.paths_tol is None:
        shared.test_state_dict_interchangeable_with_torch(info, direction)
        return
    # torch.optim casts the 0-dim state (ASGD's eta, mu) to the parameters'
    # dtype on loading, so its later values round differently from an
    # uninterrupted run
    cfg = info.configs[-1]
    m_ref, m = shared.make_model(), shared.make_model()
    shared.train(m_ref, info.ref_cls(m_ref.parameters(), **cfg), 40)
    o_src = info.cls(m.parameters(), **cfg)
    shared.train(m, o_src, 20)
    o_dst = info.ref_cls(m.parameters(), **cfg)
    o_dst.load_state_dict(shared._roundtrip(o_src.state_dict()))
    shared.train(m, o_dst, 20)
    shared.assert_params_close(m.parameters(), m_ref.parameters(), **info.paths_tol)


@FOREACH
@INFO
def test_pending_complex_params(info, foreach):
    if info.supports_complex:
        shared.test_complex_params_match_torch(info, foreach)
        return
    for cls in (info.ref_cls, info.cls):
        w = torch.zeros(3, 2, dtype=torch.complex128, requires_grad=True)
        opt = cls([w], foreach=foreach)
        w.grad = torch.ones_like(w)
        with pytest.raises(RuntimeError, match=f"{info.name} does not support complex parameters"):
            opt.step()


@INFO
def test_pending_default_path_follows_torch_rule_on_cpu(info, monkeypatch):
    shared.test_default_path_follows_torch_rule_on_cpu(info, monkeypatch)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
@FOREACH
@INFO
@pytest.mark.parametrize("name", [
    "test_state_dict_resume_is_bit_identical",
    "test_params_without_grad_are_skipped",
    "test_sparse_gradients",
])
def test_pending_shared_per_path(name, info, foreach):
    getattr(shared, name)(info, foreach)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@FOREACH
@INFO
def test_pending_low_precision_matches_torch(info, foreach, dtype):
    shared.test_low_precision_matches_torch(info, foreach, dtype)


@INFO
@pytest.mark.parametrize("name", [
    "test_state_dict_has_torch_layout",
    "test_param_group_with_zero_lr_is_frozen",
    "test_closure_returns_loss_and_runs_with_grad",
    "test_lr_scheduler_matches_torch",
    "test_maximize_is_minimize_of_negated_loss",
    "test_deepcopy_gives_an_independent_equal_optimizer",
    "test_hooks_named_parameters_and_added_groups",
    "test_tensor_lr_is_accepted",
    "test_long_run_rosenbrock_converges",
    "test_long_run_ill_conditioned_quadratic_converges",
])
def test_pending_shared(name, info):
    getattr(shared, name)(info)


@pytest.mark.parametrize(
    "info,kwargs,name",
    [
        pytest.param(i, kw, n, id=f"{i.name}-{n}-{shared._short(kw)}")
        for i in SHARED_PENDING + OWN_TESTS
        for kw, n in i.error_inputs
    ],
)
def test_pending_invalid_hyperparameter(info, kwargs, name):
    shared.test_invalid_hyperparameter_raises_value_error_naming_it(info, kwargs, name)


@INFO_ALL
@pytest.mark.parametrize("flag", ["differentiable", "capturable"])
def test_pending_unimplemented_flags_are_refused(info, flag):
    shared.test_unimplemented_flags_are_refused(info, flag)


@INFO_ALL
@pytest.mark.parametrize(
    "params,kind",
    [([], "empty"), (None, "not iterable"), (3, "not iterable"), (torch.zeros(2, requires_grad=True), "tensor")],
    ids=["empty", "None", "int", "tensor"],
)
def test_pending_invalid_params_argument(info, params, kind):
    shared.test_invalid_params_argument(info, params, kind)


@INFO_ALL
@pytest.mark.parametrize("name", ["test_repr_names_class_and_hyperparameters", "test_defaults_match_torch_signature"])
def test_pending_shared_construction(name, info):
    getattr(shared, name)(info)


@shared.cuda
@FOREACH
@INFO
def test_pending_cuda_matches_torch(info, foreach):
    shared.test_cuda_matches_torch(info, foreach)


@shared.cuda
@INFO
def test_pending_cuda_default_path_is_foreach(info, monkeypatch):
    shared.test_cuda_default_path_is_foreach(info, monkeypatch)
