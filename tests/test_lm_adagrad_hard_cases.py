"""LMAdagrad and FullMatrixAdagrad on hard inputs: non-finite gradients,
states too large for memory, complex parameters with momentum, DTensors.

The mathematics on ordinary inputs is tested in test_lm_adagrad.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import optimizers
from optimizers import lm_adagrad as lm

NAN, INF = float("nan"), float("inf")

CLASSES = [
    pytest.param(optimizers.LMAdagrad, {"history_size": 3}, id="LMAdagrad"),
    pytest.param(optimizers.LMAdagrad, {"history_size": 3, "momentum": 0.9, "concatenate": True},
                 id="LMAdagrad-momentum-concatenate"),
    pytest.param(optimizers.FullMatrixAdagrad, {}, id="FullMatrixAdagrad"),
    pytest.param(optimizers.FullMatrixAdagrad, {"history_size": 3}, id="FullMatrixAdagrad-window"),
]


# --------------------------------------------------------------------------- #
# Non-finite gradients: a clear error, and nothing touched                     #
# --------------------------------------------------------------------------- #


def _snapshot(opt, params):
    state = {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
        for p in params
    }
    return [p.detach().clone() for p in params], state


def _assert_same(before, opt, params):
    values, state = before
    for p, v in zip(params, values):
        torch.testing.assert_close(p.detach(), v, rtol=0, atol=0)
    for p in params:
        assert set(opt.state[p]) == set(state[id(p)])
        for k, v in state[id(p)].items():
            torch.testing.assert_close(opt.state[p][k], v, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("cls,kw", CLASSES)
def test_nonfinite_gradient_raises_and_changes_nothing(cls, kw, foreach):
    """The issue's gradient [1, nan, inf, 1] at the third step of the second
    group: FloatingPointError naming the parameter and the step; parameters
    and state (history, Gram matrix, momentum, counters) of every group as
    before, and the following finite steps identical to a run that never saw it."""
    def make():
        torch.manual_seed(0)
        a = torch.randn(3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, requires_grad=True)
        return a, b, cls([{"params": [a]}, {"params": [b]}], lr=0.1, foreach=foreach, **kw)

    a, b, opt = make()
    a2, b2, ref = make()
    torch.manual_seed(1)
    grads = [(torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)) for _ in range(6)]
    for ga, gb in grads[:2]:
        for (x, y), o in (((a, b), opt), ((a2, b2), ref)):
            x.grad, y.grad = ga.clone(), gb.clone()
            o.step()
    before = _snapshot(opt, [a, b])
    a.grad = torch.ones(3, dtype=torch.float64)
    b.grad = torch.tensor([1.0, NAN, INF, 1.0], dtype=torch.float64)
    with pytest.raises(FloatingPointError) as err:
        opt.step()
    msg = str(err.value)
    assert "param_groups[1]['params'][0]" in msg and "step t = 2" in msg
    assert "1 NaN and 1 infinite entries out of 4" in msg and "index (1,)" in msg
    _assert_same(before, opt, [a, b])
    for ga, gb in grads[2:]:  # the bad step skipped: the run continues as if it never came
        for (x, y), o in (((a, b), opt), ((a2, b2), ref)):
            x.grad, y.grad = ga.clone(), gb.clone()
            o.step()
        assert torch.equal(a, a2) and torch.equal(b, b2)
        assert torch.isfinite(a).all() and torch.isfinite(b).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64])
def test_nonfinite_gradient_first_step_and_dtypes(dtype):
    p = torch.zeros(2, 5, dtype=dtype, requires_grad=True)
    opt = optimizers.LMAdagrad([p], history_size=4)
    g = torch.ones(2, 5, dtype=dtype)
    g[1, 3] = -INF
    p.grad = g
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[0\].*0 NaN and 1 "
                       r"infinite entries out of 10 \(the first at index \(1, 3\)\), at step t = 0"):
        opt.step()
    assert len(opt.state[p]) == 0 and torch.equal(p, torch.zeros_like(p))  # nothing allocated


def test_large_finite_float16_gradient_is_not_called_non_finite():
    """The fast check is a norm, which overflows float16 (max 65504) although
    every entry is finite: such a gradient must pass."""
    p = torch.zeros(1000, dtype=torch.float16, requires_grad=True)
    opt = optimizers.LMAdagrad([p], lr=0.1, history_size=2)
    p.grad = torch.full((1000,), 3000.0, dtype=torch.float16)
    assert not torch.isfinite(torch.linalg.vector_norm(p.grad))
    opt.step()
    assert torch.isfinite(p).all() and p.abs().max() > 0


def test_functional_core_names_its_argument():
    p = torch.zeros(3, requires_grad=True)
    q = torch.zeros(2)
    hist, gram = torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.float64)
    hist_q, gram_q = torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"lm_adagrad: the gradient of params\[1\].*step t = 0"):
        lm.lm_adagrad([p, q], [torch.ones(3), torch.tensor([NAN, 1.0])], [hist, hist_q],
                      [torch.tensor(0.0), torch.tensor(0.0)], [None, None], [None, None],
                      grams=[gram, gram_q])
    assert hist.abs().sum() == 0 and gram.abs().sum() == 0


def test_full_matrix_sum_overflow_is_refused_before_storing():
    """float16 A_t = sum g g^T overflows with finite gradients (|g| > 256)."""
    p = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    opt = optimizers.FullMatrixAdagrad([p])
    p.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)
    opt.step()
    before = opt.state[p]["sum"].clone(), p.detach().clone()
    p.grad = torch.tensor([1.0, 300.0, 3.0], dtype=torch.float16)
    with pytest.raises(FloatingPointError, match=r"A_t .* param_groups\[0\]\['params'\]\[0\] overflows "
                       r"torch.float16 at step t = 1"):
        opt.step()
    assert torch.equal(opt.state[p]["sum"], before[0]) and torch.equal(p, before[1])


def test_eigh_failure_names_the_parameter(monkeypatch):
    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    p = torch.zeros(3, requires_grad=True)
    opt = optimizers.FullMatrixAdagrad([{"params": [torch.zeros(2, requires_grad=True)]}, {"params": [p]}])
    p.grad = torch.ones(3)
    monkeypatch.setattr(lm.torch.linalg, "eigh", fail)
    with pytest.raises(torch.linalg.LinAlgError, match=r"3 x 3 matrix A_t of param_groups\[1\]\['params'\]\[0\] "
                       r"failed at step t = 0: linalg.eigh"):
        opt.step()


# --------------------------------------------------------------------------- #
# Memory: refused before allocating, with the number of bytes                  #
# --------------------------------------------------------------------------- #


def test_huge_history_refused_at_construction_with_its_bytes():
    p = torch.zeros(10, requires_grad=True)
    need = 10**9 * 10 * 4 + 8 * 10**18  # the window (float32) and the k x k float64 Gram matrix
    with pytest.raises(ValueError, match=rf"LMAdagrad would need \d+ bytes .*\({need} for the optimizer state"):
        optimizers.LMAdagrad([p], history_size=10**9)


def test_huge_full_matrix_refused_at_construction():
    p = torch.zeros(10**6, requires_grad=True)  # A_t: 10^12 float32 numbers
    with pytest.raises(ValueError, match=r"FullMatrixAdagrad would need \d+ bytes .*\(4000000000000 for the "
                       r"optimizer state.*use it for small tensors only"):
        optimizers.FullMatrixAdagrad([p])


@pytest.mark.parametrize("cls", [optimizers.LMAdagrad, optimizers.FullMatrixAdagrad])
def test_memory_limit_is_exact_and_rechecked_at_the_first_step(cls, monkeypatch):
    """With the device's memory set to exactly what is needed the optimizer is
    accepted; one byte less is refused. A group enlarged after construction is
    refused at its first step, before any state is allocated."""
    p = torch.zeros(6, 5, requires_grad=True)
    q = torch.zeros(7, dtype=torch.float64, requires_grad=True)
    bytes_of = lm._lm_state_bytes if cls is optimizers.LMAdagrad else lm._full_state_bytes
    opt = cls([{"params": [p]}, {"params": [q]}], history_size=4)
    need = sum(bytes_of(x, g)[0] for x, g in zip((p, q), opt.param_groups))
    need += max(bytes_of(x, g)[1] for x, g in zip((p, q), opt.param_groups))
    monkeypatch.setattr(lm, "_device_memory", lambda device: need)
    cls([{"params": [p]}, {"params": [q]}], history_size=4)
    monkeypatch.setattr(lm, "_device_memory", lambda device: need - 1)
    with pytest.raises(ValueError, match=rf"would need {need} bytes"):
        cls([{"params": [p]}, {"params": [q]}], history_size=4)
    # add_param_group: refused, and the group is not kept
    monkeypatch.setattr(lm, "_device_memory", lambda device: need + 1)
    opt = cls([p], history_size=4)
    with pytest.raises(ValueError, match="would need"):
        opt.add_param_group({"params": [q], "history_size": 10**4})
    assert len(opt.param_groups) == 1
    # history_size raised after construction: refused at the first step
    opt.param_groups[0]["history_size"] = 10**4
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="would need"):
        opt.step()
    assert len(opt.state[p]) == 0 and torch.equal(p, torch.zeros_like(p))


def test_unknown_device_memory_is_not_checked():
    assert lm._device_memory(torch.device("meta")) is None
    opt = optimizers.LMAdagrad([torch.zeros(10**6, device="meta", requires_grad=True)], history_size=10**6)
    assert opt.param_groups[0]["history_size"] == 10**6


def test_cpu_memory_is_the_machines():
    mem = lm._device_memory(torch.device("cpu"))
    assert mem is not None and mem > 2**28


# --------------------------------------------------------------------------- #
# Complex parameters: the view_as_real twin follows the same trajectory        #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("kw", [
    {"momentum": 0.9},
    {"momentum": 0.9, "momentum_mode": "update", "update_norm": "clip"},
    {"momentum": 0.5, "weight_decay": 0.1, "centered": True},
    {"momentum": 0.9, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
    {"momentum": 0.9, "update_norm": "graft", "concatenate": True, "weight_decay": 0.1},
], ids=["gradient-momentum", "update-momentum", "centred-coupled", "decoupled-maximize", "concatenated"])
def test_complex_parameter_and_its_real_twin_are_identical(kw, dtype, foreach):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(8, dtype=dtype, generator=gen).requires_grad_(True)
    r = torch.view_as_real(z.detach()).clone().requires_grad_(True)
    oz = optimizers.LMAdagrad([z], lr=0.1, history_size=4, foreach=foreach, **kw)
    orr = optimizers.LMAdagrad([r], lr=0.1, history_size=4, foreach=foreach, **kw)
    for _ in range(20):
        g = torch.randn(8, 2, dtype=r.dtype, generator=gen)
        r.grad, z.grad = g.clone(), torch.view_as_complex(g.clone())
        oz.step()
        orr.step()
        assert torch.equal(torch.view_as_real(z.detach()), r.detach())


# --------------------------------------------------------------------------- #
# DTensor parameters: FullMatrixAdagrad refuses them at construction           #
# --------------------------------------------------------------------------- #

_DTENSOR_SCRIPT = textwrap.dedent(
    """
    import datetime, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    import optimizers

    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=datetime.timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        mesh = init_device_mesh("cpu", (1,))
        plain = torch.nn.Parameter(torch.zeros(3))
        sharded = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)]))
        try:
            optimizers.FullMatrixAdagrad([{"params": [plain]}, {"params": [torch.nn.Parameter(torch.ones(2)), sharded]}])
        except TypeError as err:
            print("REFUSED:", err)
        opt = optimizers.FullMatrixAdagrad([plain])
        try:
            opt.add_param_group({"params": [sharded]})
        except TypeError as err:
            print("ADD REFUSED, groups:", len(opt.param_groups))
    finally:
        dist.destroy_process_group()
    """
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_full_matrix_adagrad_refuses_dtensor_parameters():
    """A DTensor on a one-process gloo mesh (loopback only, in a subprocess
    with a time limit, so no process group leaks into the test session)."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    out = subprocess.run([sys.executable, "-c", _DTENSOR_SCRIPT], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED: FullMatrixAdagrad does not support DTensor parameters, but " \
           "param_groups[1]['params'][1] is a DTensor with placements (Shard(dim=0),)" in out.stdout
    assert "fully_shard" in out.stdout
    assert "ADD REFUSED, groups: 1" in out.stdout


def test_dtensor_check_passes_plain_tensors():
    lm._check_no_dtensor("FullMatrixAdagrad", 0, [torch.zeros(2), torch.nn.Parameter(torch.zeros(1))], "why")
    assert not lm._is_dtensor(torch.zeros(1))
    assert math.isfinite(float(optimizers.FullMatrixAdagrad([torch.zeros(2, requires_grad=True)]).defaults["lr"]))
