"""Behaviour of every optimizer in the catalogue (tests/optim_catalogue.py).

Each test is parametrized over the catalogue: adding an optimizer there adds it
to every test here. The reference is ``torch.optim`` (same class name). The
construction-level tests (validation, ``repr``, signature) also take the
entries whose step the shared tests do not fit (``OWN_TESTS``: SparseAdam,
LBFGS, with their own test files).
"""

from __future__ import annotations

import copy
import io
import math
import re
from typing import Any

import pytest
import torch
from torch import nn

from optim_catalogue import CATALOGUE, OWN_TESTS, all_config_ids, all_configs, refuses_foreach

# Tolerances. float64 trajectories of identical op sequences are bit-identical;
# the tolerance leaves room for configurations where torch keeps a scalar in a
# float32 tensor (a tensor lr) while we use a Python float.
TIGHT = dict(rtol=1e-12, atol=1e-14)
TENSOR_LR = dict(rtol=1e-6, atol=1e-9)

STEPS = 100


@pytest.fixture(autouse=True, scope="module")
def _single_intra_op_thread():
    """Run this module's tiny problems on one intra-op thread.

    The tensors here have at most a few dozen elements; on a shared 2-core
    machine, OpenMP threads only add contention (measured: 100 fused Adam
    steps on the MLP take 6.7 s with 2 threads under load, 0.2 s with 1).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
INFOS = CATALOGUE
INFO_IDS = [i.name for i in INFOS]
WITH_REF = [i for i in INFOS if i.ref_cls is not None]
# entries for the tests that only construct an optimizer
CONSTRUCTED = CATALOGUE + OWN_TESTS
CONSTRUCTED_IDS = [i.name for i in CONSTRUCTED]


# --------------------------------------------------------------------------- #
# Problems                                                                     #
# --------------------------------------------------------------------------- #


def make_model(dtype: torch.dtype = torch.float64, seed: int = 0, width: int = 8) -> nn.Module:
    """A 2-layer MLP, 4 -> width -> 3, with seeded weights (identical for equal seeds)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model.to(dtype)


def make_data(dtype: torch.dtype = torch.float64, seed: int = 1, n: int = 16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = torch.randn(n, 3, generator=gen)
    return x.to(dtype), y.to(dtype)


def loss_fn(model: nn.Module, data) -> torch.Tensor:
    x, y = data
    return ((model(x) - y) ** 2).mean()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, data=None, scheduler=None) -> None:
    data = data if data is not None else make_data(next(model.parameters()).dtype)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, data).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_params_close(a, b, **tol) -> None:
    pa, pb = list(a), list(b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, **tol)


def assert_params_equal(a, b) -> None:
    for x, y in zip(list(a), list(b)):
        assert torch.equal(x, y), (x - y).abs().max()


def assert_state_close(opt_a, opt_b, **tol) -> None:
    """Per-parameter state of two optimizers agrees (same keys, close tensors)."""
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys(), (sa[k].keys(), sb[k].keys())
        for key in sa[k]:
            va, vb = sa[k][key], sb[k][key]
            if torch.is_tensor(va):
                torch.testing.assert_close(va, vb, **tol, msg=lambda m: f"state {key}: {m}")
            else:
                assert va == vb


def tol_for(cfg: dict[str, Any]) -> dict[str, float]:
    return TENSOR_LR if isinstance(cfg.get("lr"), torch.Tensor) else TIGHT


def ref_kwargs(cfg: dict[str, Any], foreach: bool) -> dict[str, Any]:
    """torch.optim's Adam/AdamW refuse a tensor lr with foreach=True (without capturable)."""
    if isinstance(cfg.get("lr"), torch.Tensor):
        foreach = False
    return {**cfg, "foreach": foreach}


# --------------------------------------------------------------------------- #
# Parity with torch.optim                                                      #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("info,cfg", all_configs(), ids=all_config_ids())
def test_trajectory_matches_torch(info, cfg, foreach):
    if info.ref_cls is None:
        pytest.skip("no torch.optim reference")
    ours_model, ref_model = make_model(), make_model()
    if foreach and refuses_foreach(info, cfg):  # as torch.optim, with its phrase
        with pytest.raises(ValueError, match="lr as a Tensor is not supported for capturable=False and foreach=True"):
            info.cls(ours_model.parameters(), **cfg, foreach=foreach)
        return
    ours = info.cls(ours_model.parameters(), **cfg, foreach=foreach)
    ref = info.ref_cls(ref_model.parameters(), **ref_kwargs(cfg, foreach))
    train(ours_model, ours, STEPS)
    train(ref_model, ref, STEPS)
    tol = tol_for(cfg)
    assert_params_close(ours_model.parameters(), ref_model.parameters(), **tol)
    assert_state_close(ours, ref, **tol)
    # the run really moved the parameters
    assert not torch.equal(params_of(ours_model)[0], params_of(make_model())[0])


@pytest.mark.parametrize("info,cfg", all_configs(), ids=all_config_ids())
def test_foreach_matches_single_tensor(info, cfg):
    if refuses_foreach(info, cfg):
        pytest.skip("a tensor lr with foreach=True is refused, as by torch.optim (tested in test_trajectory_matches_torch)")
    m1, m2 = make_model(), make_model()
    o1 = info.cls(m1.parameters(), **cfg, foreach=False)
    o2 = info.cls(m2.parameters(), **cfg, foreach=True)
    # The two paths may round differently (torch's own do, e.g. NAdam's
    # sqrt(v / c) versus sqrt(v) / sqrt(c)); they agree to float64 precision,
    # but configurations that maximize the loss amplify rounding differences
    # after about 60 steps (torch's two paths part in the same way).
    train(m1, o1, 50)
    train(m2, o2, 50)
    if info.paths_tol is not None:
        tol = info.paths_tol
    else:
        tol = TENSOR_LR if isinstance(cfg.get("lr"), torch.Tensor) else dict(rtol=1e-9, atol=1e-11)
    assert_params_close(m1.parameters(), m2.parameters(), **tol)
    assert_state_close(o1, o2, **tol)
    if info.paths_tol is not None:  # the entry's own tolerance: torch's two paths part by as much
        r1, r2 = make_model(), make_model()
        train(r1, info.ref_cls(r1.parameters(), **ref_kwargs(cfg, False)), 50)
        train(r2, info.ref_cls(r2.parameters(), **ref_kwargs(cfg, True)), 50)
        assert_params_close(r1.parameters(), r2.parameters(), **info.paths_tol)


def _spy_paths(info, monkeypatch) -> list[str]:
    """Patch the module's two functional paths to record which one runs."""
    module = __import__(info.cls.__module__, fromlist=["_"])
    name = info.cls.__module__.rsplit(".", 1)[1]
    called: list[str] = []
    for kind in ("single_tensor", "multi_tensor"):
        attr = f"_{kind}_{name}"
        if not hasattr(module, attr):
            pytest.skip(f"{info.cls.__module__} has no {attr}")
        fn = getattr(module, attr)
        monkeypatch.setattr(module, attr, lambda *a, _fn=fn, _k=kind, **k: (called.append(_k), _fn(*a, **k))[1])
    return called


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_default_path_follows_torch_rule_on_cpu(info, monkeypatch):
    """foreach=None: the single-tensor loop on CPU (torch.optim's rule), foreach=True forces the other."""
    called = _spy_paths(info, monkeypatch)
    model = make_model()
    train(model, info.cls(model.parameters(), **info.configs[0]), 2)
    assert called and set(called) == {"single_tensor"}
    called.clear()
    model = make_model()
    train(model, info.cls(model.parameters(), **info.configs[0], foreach=True), 2)
    assert called and called[0] == "multi_tensor"  # (it may delegate parts to the loop)


#: fused=True through torch's own fused kernels (SGD, Adagrad, Adam, AdamW) ...
TORCH_FUSED = [i for i in INFOS if i.supports_fused and not getattr(i.cls, "_fused_compiled", False)]
#: ... and through the package's compiled per-tensor update (the other elementwise optimizers)
COMPILED_FUSED = [i for i in INFOS if i.supports_fused and getattr(i.cls, "_fused_compiled", False)]


@pytest.mark.parametrize("info", [i for i in TORCH_FUSED if i.ref_cls is not None], ids=lambda i: i.name)
def test_fused_matches_torch_fused(info):
    for cfg in info.configs:
        if isinstance(cfg.get("lr"), torch.Tensor):
            continue
        m1, m2 = make_model(), make_model()
        o1 = info.cls(m1.parameters(), **cfg, fused=True)
        o2 = info.ref_cls(m2.parameters(), **cfg, fused=True)
        train(m1, o1, STEPS)
        train(m2, o2, STEPS)
        assert_params_close(m1.parameters(), m2.parameters(), **TIGHT)
        assert_state_close(o1, o2, **TIGHT)


@pytest.mark.parametrize("info", TORCH_FUSED, ids=lambda i: i.name)
def test_fused_refuses_complex_params_clearly(info):
    w = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = info.cls([w], fused=True)
    w.grad = torch.ones_like(w)
    with pytest.raises(RuntimeError, match=f"{info.name} with fused=True requires floating-point params"):
        opt.step()


@pytest.fixture
def compiled_fused(monkeypatch):
    """The compiled per-tensor path on the MLP's tiny tensors (it normally takes only large
    ones), captured with AOTAutograd and run op by op (``aot_eager``: the graph inductor
    receives, functionalized, without code generation, which takes seconds per kernel on a
    small machine; tests/test_fused.py runs inductor itself)."""
    from optimizers import _base

    monkeypatch.setattr(_base, "_FUSED_MIN_NUMEL", 2)
    monkeypatch.setitem(_base._FUSED_COMPILE_OPTIONS, "backend", "aot_eager")


def _fused_configs(info) -> list[dict[str, Any]]:
    """The first configuration and the last (the entries end with their richest option set)."""
    cfgs = [c for c in info.configs if not isinstance(c.get("lr"), torch.Tensor)]
    return [cfgs[0], cfgs[-1]] if len(cfgs) > 1 else cfgs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("info", COMPILED_FUSED, ids=lambda i: i.name)
def test_compiled_fused_matches_single_tensor(info, dtype, compiled_fused):
    """No torch kernel to compare with: fused=True must follow the package's single-tensor
    path, to round-off (the compiled graph may contract a*b+c into an fma, and computes
    step-dependent scalars from 0-dim tensors: float32 ones for NAdam's mu_product and
    ASGD's eta and mu, hence the float64 tolerance)."""
    if dtype == torch.float32:  # few steps: RMSprop's g / sqrt(v) amplifies last-bit changes
        steps, tol = 5, dict(rtol=1e-4, atol=1e-5)
    else:  # ASGD keeps eta and mu in float32 0-dim state (the compiled graph computes with them)
        steps, tol = 20, dict(rtol=1e-5, atol=1e-6) if info.name == "ASGD" else dict(rtol=1e-7, atol=1e-9)
    for cfg in _fused_configs(info):
        m1, m2 = make_model(dtype), make_model(dtype)
        o1 = info.cls(m1.parameters(), **cfg, fused=True)
        o2 = info.cls(m2.parameters(), **cfg, foreach=False)
        train(m1, o1, steps)
        train(m2, o2, steps)
        assert_params_close(m1.parameters(), m2.parameters(), **tol)
        assert_state_close(o1, o2, **tol)
        assert not torch.equal(params_of(m1)[0], params_of(make_model(dtype))[0])  # it moved


# --------------------------------------------------------------------------- #
# State dicts                                                                  #
# --------------------------------------------------------------------------- #


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_state_dict_resume_is_bit_identical(info, foreach):
    cfg = info.configs[-1]
    # uninterrupted
    m_full = make_model()
    o_full = info.cls(m_full.parameters(), **cfg, foreach=foreach)
    train(m_full, o_full, 40)
    # interrupted after 20 steps, saved, restored into fresh objects
    m_a = make_model()
    o_a = info.cls(m_a.parameters(), **cfg, foreach=foreach)
    train(m_a, o_a, 20)
    model_sd, optim_sd = _roundtrip(m_a.state_dict()), _roundtrip(o_a.state_dict())
    m_b = make_model(seed=123)
    m_b.load_state_dict(model_sd)
    o_b = info.cls(m_b.parameters(), **cfg, foreach=foreach)
    o_b.load_state_dict(optim_sd)
    train(m_b, o_b, 20)
    assert_params_equal(m_full.parameters(), m_b.parameters())
    sa, sb = o_full.state_dict()["state"], o_b.state_dict()["state"]
    for k in sa:
        for key in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][key]), torch.as_tensor(sb[k][key]))


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("info", WITH_REF, ids=lambda i: i.name)
def test_state_dict_interchangeable_with_torch(info, direction):
    cfg = info.configs[-1]
    src_cls, dst_cls = (info.ref_cls, info.cls) if direction == "torch_to_ours" else (info.cls, info.ref_cls)
    # reference: the destination class run for 40 steps from scratch
    m_ref = make_model()
    o_ref = dst_cls(m_ref.parameters(), **cfg)
    train(m_ref, o_ref, 40)
    # 20 steps with the source class, then 20 with the destination class
    m = make_model()
    o_src = src_cls(m.parameters(), **cfg)
    train(m, o_src, 20)
    o_dst = dst_cls(m.parameters(), **cfg)
    o_dst.load_state_dict(_roundtrip(o_src.state_dict()))
    for state in o_dst.state.values():
        if "step" in state:
            assert torch.is_tensor(state["step"]) and float(state["step"]) == 20.0
    train(m, o_dst, 20)
    tol = tol_for(cfg)
    if info.torch_load_casts and direction == "ours_to_torch":
        # torch.optim's load_state_dict casts this 0-dim state (NAdam's
        # mu_product, ASGD's eta and mu) to the parameter dtype (float64
        # here), so its later arithmetic rounds differently from an
        # uninterrupted torch run (ours casts it back, see nadam.py, asgd.py).
        tol = dict(rtol=1e-6, atol=1e-8, check_dtype=False)
    assert_params_close(m.parameters(), m_ref.parameters(), **{k: v for k, v in tol.items() if k != "check_dtype"})
    assert_state_close(o_dst, o_ref, **tol)


@pytest.mark.parametrize("info", WITH_REF, ids=lambda i: i.name)
def test_state_dict_has_torch_layout(info):
    cfg = info.configs[-1]
    m1, m2 = make_model(), make_model()
    o1, o2 = info.cls(m1.parameters(), **cfg), info.ref_cls(m2.parameters(), **cfg)
    train(m1, o1, 3)
    train(m2, o2, 3)
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"][0].keys() == s2["param_groups"][0].keys()
    assert s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        assert s1["state"][k].keys() == s2["state"][k].keys()
        for key, v in s1["state"][k].items():
            w = s2["state"][k][key]
            assert type(v) is type(w)
            if torch.is_tensor(v):
                assert (v.dtype, v.shape, v.device) == (w.dtype, w.shape, w.device), key


# --------------------------------------------------------------------------- #
# Param groups, missing gradients, closures, schedulers                        #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_param_group_with_zero_lr_is_frozen(info):
    model = make_model()
    first, second = model[0], model[2]
    cfg = dict(info.configs[-1])
    cfg.pop("lr", None)
    opt = info.cls(
        [{"params": first.parameters(), "lr": 0.0}, {"params": second.parameters(), "lr": 1e-2}],
        **cfg,
    )
    before_first, before_second = params_of(first), params_of(second)
    train(model, opt, 10)
    assert_params_equal(first.parameters(), before_first)
    assert not torch.equal(params_of(second)[0], before_second[0])


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_params_without_grad_are_skipped(info, foreach):
    model = make_model()
    opt = info.cls(model.parameters(), **info.configs[-1], foreach=foreach)
    before = params_of(model)
    opt.step()  # no gradients at all: a no-op
    assert_params_equal(model.parameters(), before)
    assert all(len(s) == 0 for s in opt.state.values()) or info.name == "Adagrad"
    # freeze the first layer: its params keep grad None and must not move
    for p in model[0].parameters():
        p.requires_grad_(False)
    train(model, opt, 5)
    assert_params_equal(model[0].parameters(), before[:2])
    if info.name != "Adagrad":  # Adagrad creates its state eagerly, as torch does
        assert all(len(opt.state.get(p, {})) == 0 for p in model[0].parameters())
    assert not torch.equal(params_of(model)[2], before[2])


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_closure_returns_loss_and_runs_with_grad(info):
    model = make_model()
    opt = info.cls(model.parameters(), **info.configs[0])
    data = make_data()
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = loss_fn(model, data)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert seen == [True]
    assert torch.is_tensor(loss) and loss.ndim == 0
    torch.testing.assert_close(loss, loss_fn(make_model(), data))
    assert opt.step() is None


@pytest.mark.parametrize("info", WITH_REF, ids=lambda i: i.name)
def test_lr_scheduler_matches_torch(info):
    cfg = {k: v for k, v in info.configs[-1].items() if not isinstance(v, torch.Tensor)}
    m1, m2 = make_model(), make_model()
    o1, o2 = info.cls(m1.parameters(), **cfg), info.ref_cls(m2.parameters(), **cfg)
    s1 = torch.optim.lr_scheduler.StepLR(o1, step_size=10, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=10, gamma=0.5)
    train(m1, o1, 35, scheduler=s1)
    train(m2, o2, 35, scheduler=s2)
    assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"] != cfg.get("lr", o2.defaults["lr"])
    assert_params_close(m1.parameters(), m2.parameters(), **TIGHT)


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_maximize_is_minimize_of_negated_loss(info):
    cfg = {k: v for k, v in info.configs[0].items() if k != "maximize"}
    m1, m2 = make_model(), make_model()
    o1 = info.cls(m1.parameters(), **cfg, maximize=True)
    o2 = info.cls(m2.parameters(), **cfg, maximize=False)
    data = make_data()
    for _ in range(20):
        o1.zero_grad()
        (-loss_fn(m1, data)).backward()
        o1.step()
        o2.zero_grad()
        loss_fn(m2, data).backward()
        o2.step()
    assert_params_close(m1.parameters(), m2.parameters(), **TIGHT)


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_deepcopy_gives_an_independent_equal_optimizer(info):
    model = make_model()
    opt = info.cls(model.parameters(), **info.configs[-1])
    train(model, opt, 5)
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2.param_groups[0]["params"][0] is next(model2.parameters())
    train(model, opt, 5)
    train(model2, opt2, 5)
    assert_params_equal(model.parameters(), model2.parameters())
    assert next(model.parameters()).data_ptr() != next(model2.parameters()).data_ptr()


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_hooks_named_parameters_and_added_groups(info):
    """Inherited torch.optim machinery keeps working: step hooks, named
    parameters, and a param group added after some steps (lazy state)."""
    model = make_model()
    opt = info.cls(list(model[0].named_parameters()), **info.configs[0])
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    train(model, opt, 2)
    assert calls == ["pre", "post"] * 2
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    opt.add_param_group({"params": [("w2", model[2].weight), ("b2", model[2].bias)]})
    before = params_of(model[2])
    train(model, opt, 3)
    assert not torch.equal(params_of(model[2])[0], before[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("info", CONSTRUCTED, ids=CONSTRUCTED_IDS)
def test_repr_names_class_and_hyperparameters(info):
    opt = info.cls(make_model().parameters())
    text = repr(opt)
    assert text.startswith(info.name + " (") and "lr:" in text and "Parameter Group 0" in text


@pytest.mark.parametrize("info", [i for i in CONSTRUCTED if i.ref_cls is not None], ids=lambda i: i.name)
def test_group_keys_stay_torch_keys_through_loads_and_copies(info):
    """Loading a state dict fills only the group keys the class has (torch's
    Optimizer.__setstate__ adds "differentiable" to the defaults of every class)."""
    ref = info.ref_cls(make_model().parameters())
    keys = ref.state_dict()["param_groups"][0].keys()
    opt = info.cls(make_model().parameters())
    for _ in range(2):
        opt.load_state_dict(_roundtrip(ref.state_dict()))
        opt = copy.deepcopy(opt)
        buf = io.BytesIO()
        torch.save(opt, buf)
        buf.seek(0)
        opt = torch.load(buf, weights_only=False)
        assert opt.state_dict()["param_groups"][0].keys() == keys


@pytest.mark.parametrize("info", CONSTRUCTED, ids=CONSTRUCTED_IDS)
def test_defaults_match_torch_signature(info):
    """Same argument names, order and defaults as torch.optim."""
    import inspect

    if info.ref_cls is None:
        pytest.skip("no torch.optim reference")
    ours = dict(inspect.signature(info.cls.__init__).parameters)
    theirs = inspect.signature(info.ref_cls.__init__).parameters
    if getattr(info.cls, "_fused_compiled", False) and "fused" not in theirs:
        # the package's compiled fused=True, one argument more than torch's class, at the end
        assert list(ours)[-1] == "fused" and ours.pop("fused").default is None
    assert list(ours) == list(theirs)
    for name in theirs:
        assert ours[name].kind == theirs[name].kind, name
        assert ours[name].default == theirs[name].default, name


# --------------------------------------------------------------------------- #
# Dtypes, complex and sparse                                                   #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("info", WITH_REF, ids=lambda i: i.name)
def test_low_precision_matches_torch(info, foreach, dtype):
    cfg = {k: v for k, v in info.configs[-1].items() if not isinstance(v, torch.Tensor)}
    m1, m2 = make_model(dtype), make_model(dtype)
    o1 = info.cls(m1.parameters(), **cfg, foreach=foreach)
    o2 = info.ref_cls(m2.parameters(), **cfg, foreach=foreach)
    train(m1, o1, 30)
    train(m2, o2, 30)
    for p in m1.parameters():
        assert p.dtype == dtype and torch.isfinite(p).all()
    tol = dict(rtol=1.6e-2, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    assert_params_close(m1.parameters(), m2.parameters(), **tol)
    for state in o1.state.values():
        for key, v in state.items():
            if torch.is_tensor(v) and v.dim() > 0:
                assert v.dtype == dtype, key


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("info", WITH_REF, ids=lambda i: i.name)
def test_complex_params_match_torch(info, foreach):
    if not info.supports_complex:  # refused at the first step, by torch's class and ours alike
        for cls in (info.ref_cls, info.cls):
            w = torch.zeros(3, 2, dtype=torch.complex128, requires_grad=True)
            opt = cls([w], foreach=foreach)
            w.grad = torch.ones_like(w)
            with pytest.raises(RuntimeError, match=f"{info.name} does not support complex parameters"):
                opt.step()
        return
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 3, dtype=torch.complex128, generator=gen)
    b0 = torch.randn(3, dtype=torch.complex128, generator=gen)
    x = torch.randn(8, 5, dtype=torch.complex128, generator=gen)
    cfg = info.configs[-1]

    def run(cls, kw):
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        opt = cls([w, b], **kw)
        for _ in range(30):
            opt.zero_grad()
            (x @ w + b).abs().pow(2).mean().backward()
            opt.step()
        return [w.detach(), b.detach()], opt

    ours, o1 = run(info.cls, {**cfg, "foreach": foreach})
    ref, o2 = run(info.ref_cls, ref_kwargs(cfg, foreach))
    assert ours[0].dtype == torch.complex128
    assert_params_close(ours, ref, **tol_for(cfg))
    assert_state_close(o1, o2, **tol_for(cfg))


def _embedding_problem(sparse: bool, seed: int = 0):
    torch.manual_seed(seed)
    emb = nn.Embedding(20, 4, sparse=sparse).double()
    with torch.no_grad():
        emb.weight.copy_(torch.randn(20, 4, generator=torch.Generator().manual_seed(seed)))
    return emb


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # torch.optim.Adagrad's own
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_sparse_gradients(info, foreach):
    idx = torch.tensor([[1, 3, 3, 7], [0, 1, 2, 3]])
    if not info.supports_sparse:
        emb = _embedding_problem(sparse=True)
        opt = info.cls(emb.parameters(), foreach=foreach)
        emb(idx).sum().backward()
        with pytest.raises(RuntimeError, match=f"{info.name} does not support sparse gradients"):
            opt.step()
        return
    cfg = info.sparse_config
    e1, e2 = _embedding_problem(True), _embedding_problem(True)
    e_dense = _embedding_problem(False)
    o1 = info.cls(e1.parameters(), **cfg, foreach=foreach)
    o2 = info.ref_cls(e2.parameters(), **cfg, foreach=False)
    for step in range(20):
        ids = (idx + step) % 20
        for e, o in ((e1, o1), (e2, o2)):
            o.zero_grad()
            (e(ids) ** 2).sum().backward()
            assert e.weight.grad.is_sparse
            o.step()
    assert_params_close(e1.parameters(), e2.parameters(), **TIGHT)
    # rows never looked up are untouched
    untouched = sorted(set(range(20)) - set(((idx.flatten()[:, None] + torch.arange(20)) % 20).flatten().tolist()))
    assert_params_equal([e1.weight[untouched]], [e_dense.weight[untouched]])


# --------------------------------------------------------------------------- #
# Validation                                                                   #
# --------------------------------------------------------------------------- #


def _error_cases():
    cases = []
    for info in CONSTRUCTED:
        for kwargs, name in info.error_inputs:
            cases.append(pytest.param(info, kwargs, name, id=f"{info.name}-{name}-{_short(kwargs)}"))
    return cases


def _short(kwargs) -> str:
    return ",".join(f"{k}={v if not torch.is_tensor(v) else 'T'}" for k, v in kwargs.items())


@pytest.mark.parametrize("info,kwargs,name", _error_cases())
def test_invalid_hyperparameter_raises_value_error_naming_it(info, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"Invalid {name}")) as err:
        info.cls(make_model().parameters(), **kwargs)
    message = str(err.value)
    assert "must" in message  # states the allowed range or form


@pytest.mark.parametrize("info", CONSTRUCTED, ids=CONSTRUCTED_IDS)
@pytest.mark.parametrize(
    "params,kind",
    [([], "empty"), (None, "not iterable"), (3, "not iterable"), (torch.zeros(2, requires_grad=True), "tensor")],
    ids=["empty", "None", "int", "tensor"],
)
def test_invalid_params_argument(info, params, kind):
    with pytest.raises(ValueError, match="Invalid params"):
        info.cls(params)
    with pytest.raises(TypeError if kind != "empty" else ValueError):
        info.cls(params)


@pytest.mark.parametrize("info", CONSTRUCTED, ids=CONSTRUCTED_IDS)
@pytest.mark.parametrize("flag", ["differentiable", "capturable"])
def test_unimplemented_flags_are_refused(info, flag):
    import inspect

    if flag not in inspect.signature(info.cls.__init__).parameters:
        pytest.skip(f"{info.name} has no {flag} argument")
    if flag == "differentiable" and getattr(info.cls, "_differentiable_supported", False):
        pytest.skip(f"{info.name} supports differentiable=True (tests/test_differentiable.py)")
    with pytest.raises(ValueError, match=f"Invalid {flag}"):
        info.cls(make_model().parameters(), **{flag: True})


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_tensor_lr_is_accepted(info):
    model = make_model()
    opt = info.cls(model.parameters(), lr=torch.tensor(1e-3))
    train(model, opt, 3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- #
# Long runs                                                                    #
# --------------------------------------------------------------------------- #


def rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    x, y = xy[0], xy[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_grad(xy: torch.Tensor) -> torch.Tensor:
    x, y = xy[0], xy[1]
    return torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])


_H = torch.diag(torch.logspace(0, 2, 10, dtype=torch.float64))  # condition number 100


def quadratic(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ _H @ x


def quadratic_grad(x: torch.Tensor) -> torch.Tensor:
    return _H @ x


def test_analytic_gradients_are_right():
    for f, grad, x in [(rosenbrock, rosenbrock_grad, torch.tensor([-1.5, 2.0], dtype=torch.float64)),
                       (quadratic, quadratic_grad, torch.linspace(-1, 1, 10, dtype=torch.float64))]:
        x = x.clone().requires_grad_()
        f(x).backward()
        torch.testing.assert_close(grad(x.detach()), x.grad)


def _long_run(info, f, grad, x0, kwargs, steps) -> tuple[float, float, torch.Tensor]:
    """``steps`` steps from ``x0``; gradients are analytic (no autograd, for speed)."""
    x = x0.clone().requires_grad_()
    opt = info.cls([x], **kwargs)
    f0 = f(x.detach()).item()
    for _ in range(steps):
        x.grad = grad(x.detach())
        opt.step()
    return f0, f(x.detach()).item(), x.detach()


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_long_run_rosenbrock_converges(info):
    x0 = torch.tensor([-1.5, 2.0], dtype=torch.float64)
    f0, f, x = _long_run(info, rosenbrock, rosenbrock_grad, x0, info.rosenbrock_kwargs, info.rosenbrock_steps)
    assert math.isfinite(f) and torch.isfinite(x).all()
    assert f < 1e-2 * f0, (f0, f)


@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_long_run_ill_conditioned_quadratic_converges(info):
    x0 = torch.ones(10, dtype=torch.float64)
    f0, f, x = _long_run(info, quadratic, quadratic_grad, x0, info.quadratic_kwargs, 2000)
    assert math.isfinite(f) and torch.isfinite(x).all()
    assert f < 1e-3 * f0, (f0, f)


# --------------------------------------------------------------------------- #
# CUDA (skipped on machines without a GPU)                                     #
# --------------------------------------------------------------------------- #

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("info", WITH_REF, ids=lambda i: i.name)
def test_cuda_matches_torch(info, foreach):
    cfg = {k: v for k, v in info.configs[-1].items() if not isinstance(v, torch.Tensor)}
    m1, m2 = make_model().cuda(), make_model().cuda()
    data = tuple(t.cuda() for t in make_data())
    o1 = info.cls(m1.parameters(), **cfg, foreach=foreach)
    o2 = info.ref_cls(m2.parameters(), **cfg, foreach=foreach)
    train(m1, o1, 50, data)
    train(m2, o2, 50, data)
    assert_params_close(m1.parameters(), m2.parameters(), rtol=1e-10, atol=1e-12)


@cuda
@pytest.mark.parametrize("info", INFOS, ids=INFO_IDS)
def test_cuda_default_path_is_foreach(info, monkeypatch):
    called = _spy_paths(info, monkeypatch)
    model = make_model().cuda()
    data = tuple(t.cuda() for t in make_data())
    train(model, info.cls(model.parameters(), **info.configs[0]), 2, data)
    assert called and called[0] == "multi_tensor"


@cuda
@pytest.mark.parametrize("info", [i for i in TORCH_FUSED if i.ref_cls is not None], ids=lambda i: i.name)
def test_cuda_fused_matches_torch(info):
    cfg = {k: v for k, v in info.configs[-1].items() if not isinstance(v, torch.Tensor)}
    m1, m2 = make_model(torch.float32).cuda(), make_model(torch.float32).cuda()
    data = tuple(t.cuda() for t in make_data(torch.float32))
    o1 = info.cls(m1.parameters(), **cfg, fused=True)
    o2 = info.ref_cls(m2.parameters(), **cfg, fused=True)
    train(m1, o1, 50, data)
    train(m2, o2, 50, data)
    assert_params_close(m1.parameters(), m2.parameters(), rtol=1e-5, atol=1e-6)
