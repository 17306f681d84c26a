"""optimizers.Muon against torch.optim.Muon in every configuration of the catalogue.

The catalogue entry (``MATRIX_ONLY`` in tests/optim_catalogue.py) carries
torch's own OptimizerInfo configurations for Muon (``optim_inputs_func_muon``)
and the options they leave at their defaults; Muon takes 2-D parameters only,
so the shared tests' MLP (which has biases) is replaced here by one without.
"""

from __future__ import annotations

import copy
import inspect
import io
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import optimizers
from optimizers.muon import adjusted_lr, zeropower_via_newtonschulz
from optim_catalogue import MATRIX_ONLY, _config_id

INFO = next(i for i in MATRIX_ONLY if i.name == "Muon")
CONFIGS = [pytest.param(c, id=_config_id(c)) for c in INFO.configs]
TIGHT = dict(rtol=0, atol=0)
TENSOR_LR = dict(rtol=1e-5, atol=1e-7)


def make_model(dtype=torch.float64, seed=0) -> nn.Module:
    """4 -> 8 -> 3 without biases: one tall (8 x 4) and one wide (3 x 8) weight."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model.to(dtype)


def make_data(dtype=torch.float64, seed=1, n=16):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen).to(dtype), torch.randn(n, 3, generator=gen).to(dtype)


def loss_fn(model, data):
    x, y = data
    return ((model(x) - y) ** 2).mean()


def train(model, opt, steps, sign=1.0):
    data = make_data(next(model.parameters()).dtype)
    for _ in range(steps):
        opt.zero_grad()
        (sign * loss_fn(model, data)).backward()
        opt.step()


def tol_for(cfg):
    return TENSOR_LR if isinstance(cfg.get("lr"), torch.Tensor) else TIGHT


def assert_same(ma, mb, **tol):
    for a, b in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(a, b, **tol)


def assert_state_same(oa, ob, **tol):
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys() == {"momentum_buffer"}
        torch.testing.assert_close(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"], **tol)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- #
# Parity with torch.optim.Muon                                                 #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_trajectory_matches_torch(cfg, foreach):
    ours_model, ref_model = make_model(), make_model()
    ours = optimizers.Muon(ours_model.parameters(), **cfg, foreach=foreach)
    ref = torch.optim.Muon(ref_model.parameters(), **cfg)
    train(ours_model, ours, 60)
    train(ref_model, ref, 60)
    assert_same(ours_model, ref_model, **tol_for(cfg))
    assert_state_same(ours, ref, **tol_for(cfg))
    assert not torch.equal(next(ours_model.parameters()), next(make_model().parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_low_precision_matches_torch(dtype, foreach):
    cfg = {"lr": 0.02, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}
    m1, m2 = make_model(dtype), make_model(dtype)
    o1 = optimizers.Muon(m1.parameters(), **cfg, foreach=foreach)
    train(m1, o1, 30)
    train(m2, torch.optim.Muon(m2.parameters(), **cfg), 30)
    assert_same(m1, m2, **TIGHT)
    for state in o1.state.values():
        assert state["momentum_buffer"].dtype == dtype


@pytest.mark.parametrize("cfg", CONFIGS)
def test_foreach_matches_single_tensor(cfg):
    m1, m2 = make_model(), make_model()
    o1 = optimizers.Muon(m1.parameters(), **cfg, foreach=False)
    o2 = optimizers.Muon(m2.parameters(), **cfg, foreach=True)
    train(m1, o1, 40)
    train(m2, o2, 40)
    assert_same(m1, m2, **TIGHT)
    assert_state_same(o1, o2, **TIGHT)


def test_default_is_single_tensor_on_cpu(monkeypatch):
    import optimizers.muon as mod

    called = []
    for name in ("_single_tensor_muon", "_multi_tensor_muon"):
        fn = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _fn=fn, _n=name, **k: (called.append(_n), _fn(*a, **k))[1])
    model = make_model()
    train(model, optimizers.Muon(model.parameters()), 2)
    assert set(called) == {"_single_tensor_muon"}


def test_functional_pieces_are_torchs():
    from torch.optim import _muon

    gen = torch.Generator().manual_seed(3)
    for shape in [(5, 3), (3, 5), (4, 4)]:
        G = torch.randn(shape, generator=gen, dtype=torch.float64)
        assert torch.equal(zeropower_via_newtonschulz(G), _muon._zeropower_via_newtonschulz(
            G, _muon.DEFAULT_A and (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C), 5, _muon.EPS))
        for fn in (None, "original", "match_rms_adamw"):
            assert adjusted_lr(0.1, fn, torch.Size(shape)) == _muon._adjust_lr(0.1, fn, torch.Size(shape))


def test_signature_is_torchs_plus_keyword_only_extras():
    ours = inspect.signature(optimizers.Muon.__init__).parameters
    theirs = inspect.signature(torch.optim.Muon.__init__).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name in theirs:
        assert (ours[name].kind, ours[name].default) == (theirs[name].kind, theirs[name].default), name
    extras = {n: p for n, p in ours.items() if n not in theirs}
    assert set(extras) == {"maximize", "foreach"}
    assert all(p.kind == p.KEYWORD_ONLY for p in extras.values())
    assert extras["maximize"].default is False and extras["foreach"].default is None


# --------------------------------------------------------------------------- #
# The iteration itself                                                         #
# --------------------------------------------------------------------------- #


def test_newton_schulz_acts_on_singular_values_only():
    """In float64 the output has G's singular vectors and singular values p^(k)(sigma / ||G||_F)."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((6, 4))
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    a, b, c = optimizers.muon.DEFAULT_NS_COEFFICIENTS
    x = s / np.linalg.norm(G)
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    O = zeropower_via_newtonschulz(torch.from_numpy(G), dtype=torch.float64).numpy()
    np.testing.assert_allclose(O, U @ np.diag(x) @ Vt, rtol=1e-12, atol=1e-12)
    # the quintic does not converge to 1: its singular values stay in a band around 1
    assert 0.6 < x.min() and x.max() < 1.25 and np.ptp(x) > 0.05


def test_classic_cubic_iteration_converges_to_the_polar_factor():
    rng = np.random.default_rng(1)
    G = rng.standard_normal((5, 7))
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    O = zeropower_via_newtonschulz(torch.from_numpy(G), (1.5, -0.5, 0.0), 60, 1e-7, torch.float64).numpy()
    np.testing.assert_allclose(O, U @ Vt, atol=1e-10)
    # the ZCA-whitening form of the same matrix: (G G^T)^{-1/2} G
    w, Q = np.linalg.eigh(G @ G.T)
    np.testing.assert_allclose(O, Q @ np.diag(w**-0.5) @ Q.T @ G, atol=1e-10)


# --------------------------------------------------------------------------- #
# State dicts, maximize, closures, groups                                      #
# --------------------------------------------------------------------------- #


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_state_dict_resume_is_bit_identical(foreach):
    cfg = {"lr": 0.02, "momentum": 0.9}
    m_full = make_model()
    train(m_full, optimizers.Muon(m_full.parameters(), **cfg, foreach=foreach), 20)
    m = make_model()
    o = optimizers.Muon(m.parameters(), **cfg, foreach=foreach)
    train(m, o, 10)
    sd = _roundtrip(o.state_dict())
    m2 = copy.deepcopy(m)
    o2 = optimizers.Muon(m2.parameters(), lr=1.0, momentum=0.1)
    o2.load_state_dict(sd)
    assert o2.param_groups[0]["lr"] == 0.02 and o2.param_groups[0]["foreach"] == foreach
    train(m2, o2, 10)
    assert_same(m2, m_full, **TIGHT)


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_interchangeable_with_torch(direction):
    cfg = {"lr": 0.02}
    src_cls, dst_cls = (torch.optim.Muon, optimizers.Muon) if direction == "torch_to_ours" else (
        optimizers.Muon, torch.optim.Muon)
    m_full = make_model()
    train(m_full, torch.optim.Muon(m_full.parameters(), **cfg), 16)
    m = make_model()
    o = src_cls(m.parameters(), **cfg)
    train(m, o, 8)
    o2 = dst_cls(m.parameters(), **cfg)
    o2.load_state_dict(_roundtrip(o.state_dict()))
    train(m, o2, 8)
    assert_same(m, m_full, **TIGHT)


def test_maximize_is_minimize_of_negated_loss():
    m1, m2 = make_model(), make_model()
    train(m1, optimizers.Muon(m1.parameters(), lr=0.02, maximize=True), 20, sign=-1.0)
    train(m2, optimizers.Muon(m2.parameters(), lr=0.02), 20)
    assert_same(m1, m2, **TIGHT)


def test_closure_param_groups_and_skipped_params():
    model = make_model()
    w1, w2 = model[0].weight, model[2].weight
    opt = optimizers.Muon([{"params": [w1]}, {"params": [w2], "lr": 0.0, "weight_decay": 0.0}], lr=0.02)
    data = make_data()
    before = w2.detach().clone()

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, data)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(30)]
    assert losses[-1] < 0.75 * losses[0]  # (only the first layer learns)
    assert torch.equal(w2.detach(), before)  # lr = 0: frozen
    w2.grad = None
    opt.step()  # a parameter without a gradient gets no state
    fresh = optimizers.Muon([w1, w2], lr=0.02)
    w1.grad, w2.grad = torch.ones_like(w1), None
    fresh.step()
    assert w2 not in fresh.state and w1 in fresh.state


def test_lr_scheduler_matches_torch():
    m1, m2 = make_model(), make_model()
    o1 = optimizers.Muon(m1.parameters(), lr=0.05)
    o2 = torch.optim.Muon(m2.parameters(), lr=0.05)
    s1 = torch.optim.lr_scheduler.StepLR(o1, 5, 0.5)
    s2 = torch.optim.lr_scheduler.StepLR(o2, 5, 0.5)
    for _ in range(15):
        train(m1, o1, 1)
        train(m2, o2, 1)
        s1.step()
        s2.step()
    assert_same(m1, m2, **TIGHT)


# --------------------------------------------------------------------------- #
# Validation                                                                   #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kwargs,name", INFO.error_inputs, ids=[f"{n}-{k}" for k, n in INFO.error_inputs])
def test_invalid_hyperparameter_raises_value_error_naming_it(kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"Invalid {name}")) as err:
        optimizers.Muon(make_model().parameters(), **kwargs)
    assert "must" in str(err.value)


@pytest.mark.parametrize("kwargs,regex", INFO.torch_error_inputs)
def test_torch_error_inputs_raise_torch_phrase(kwargs, regex):
    params = [nn.Parameter(torch.randn(2, 3, dtype=torch.float64))]
    with pytest.raises(ValueError, match=regex):
        torch.optim.Muon(params, **kwargs)
    with pytest.raises(ValueError, match=regex) as err:
        optimizers.Muon(params, **kwargs)
    assert "Invalid" in str(err.value) and "must" in str(err.value)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()], ids=["1d", "3d", "0d"])
def test_parameters_that_are_not_matrices_are_refused(shape):
    bad = nn.Parameter(torch.zeros(shape))
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        torch.optim.Muon([bad])
    with pytest.raises(ValueError, match=r"Invalid params: param_groups\[0\]\['params'\]\[1\] has") as err:
        optimizers.Muon([nn.Parameter(torch.zeros(2, 2)), bad])
    assert "Muon only supports 2D parameters" in str(err.value) and "AdamW" in str(err.value)
    opt = optimizers.Muon([nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match="must be a 2-D matrix"):
        opt.add_param_group({"params": [bad]})
    assert len(opt.param_groups) == 1


def test_complex_and_sparse_refused_at_step_with_torchs_message():
    z = torch.zeros(2, 3, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.ones_like(z)
    for cls in (optimizers.Muon, torch.optim.Muon):
        with pytest.raises(RuntimeError, match="Muon does not support complex parameters"):
            cls([z]).step()
    w = torch.zeros(2, 3, requires_grad=True)
    w.grad = torch.ones(2, 3).to_sparse()
    for cls in (optimizers.Muon, torch.optim.Muon):
        with pytest.raises(RuntimeError, match="Muon does not support sparse gradients"):
            cls([w]).step()


def test_repr_and_invalid_params_argument():
    text = repr(optimizers.Muon(make_model().parameters()))
    assert text.startswith("Muon (") and "ns_coefficients" in text
    for params in ([], None, torch.zeros(2, 2, requires_grad=True)):
        with pytest.raises(ValueError, match="Invalid params"):
            optimizers.Muon(params)


# --------------------------------------------------------------------------- #
# DTensor parameters: refused at construction                                  #
# --------------------------------------------------------------------------- #

DTENSOR_SCRIPT = textwrap.dedent(
    """
    import datetime, sys, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    import optimizers

    cls = getattr(optimizers, sys.argv[1])
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=datetime.timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)]))
        try:
            cls([{"params": [torch.nn.Parameter(torch.zeros(2, 2))]}, {"params": [sharded]}])
        except TypeError as err:
            print("REFUSED:", err)
        opt = cls([torch.nn.Parameter(torch.zeros(2, 2))])
        try:
            opt.add_param_group({"params": [sharded]})
        except TypeError:
            print("ADD REFUSED, groups:", len(opt.param_groups))
    finally:
        dist.destroy_process_group()
    """
)


def run_dtensor_script(name: str) -> str:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    out = subprocess.run([sys.executable, "-c", DTENSOR_SCRIPT, name], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_dtensor_parameters_are_refused_at_construction():
    out = run_dtensor_script("Muon")
    assert ("REFUSED: Muon does not support DTensor parameters, but param_groups[1]['params'][0] "
            "is a DTensor with placements (Shard(dim=0),)") in out
    assert "ADD REFUSED, groups: 1" in out
