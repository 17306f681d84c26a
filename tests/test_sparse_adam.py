"""SparseAdam: what the shared catalogue tests cannot check (it takes only sparse gradients).

The catalogue entry (tests/optim_catalogue.py, ``OWN_TESTS``) holds the
configurations and error inputs; here each configuration runs on an embedding
table against torch.optim.SparseAdam, and the lazy update is checked against
its definition.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import optimizers
from optim_catalogue import OWN_TESTS
from test_optimizers import TIGHT, _roundtrip, tol_for
from test_properties import _single_intra_op_thread  # noqa: F401  (autouse fixture)

INFO = next(i for i in OWN_TESTS if i.name == "SparseAdam")
ROWS, DIM = 20, 4


def _table(dtype=torch.float64, seed=0) -> nn.Embedding:
    emb = nn.Embedding(ROWS, DIM, sparse=True).to(dtype)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(seed)))
    return emb


def _batches(steps: int):
    """Look-ups with repeated indices; rows 15..19 are never looked up; every
    fifth step looks up nothing (an empty sparse gradient)."""
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        yield None if t % 5 == 4 else torch.randint(0, 15, (3, 4), generator=gen)


def _empty_grad(emb: nn.Embedding) -> torch.Tensor:
    w = emb.weight
    return torch.sparse_coo_tensor(
        torch.empty(1, 0, dtype=torch.long), torch.empty(0, DIM, dtype=w.dtype), w.shape,
        check_invariants=True,
    )


def _train(emb: nn.Embedding, opt, steps: int, sign: float = 1.0, start: int = 0) -> None:
    """Steps ``start`` to ``steps - 1`` of :func:`_batches`."""
    for ids in list(_batches(steps))[start:]:
        opt.zero_grad()
        if ids is None:
            emb.weight.grad = _empty_grad(emb)
        else:
            (sign * (emb(ids) - 0.5).pow(2).sum()).backward()
        opt.step()


def _assert_state_close(o1, o2, **tol):
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].keys() == s2[k].keys()
        assert type(s1[k]["step"]) is type(s2[k]["step"]) is int and s1[k]["step"] == s2[k]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s1[k][key], s2[k][key], **tol)


LOW_PRECISION_TOL = {torch.float32: dict(rtol=1e-6, atol=1e-7), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("cfg", INFO.configs, ids=INFO.config_ids())
def test_trajectory_matches_torch(cfg, dtype):
    e1, e2 = _table(dtype), _table(dtype)
    o1, o2 = INFO.cls(e1.parameters(), **cfg), INFO.ref_cls(e2.parameters(), **cfg)
    _train(e1, o1, 40)
    _train(e2, o2, 40)
    tol = tol_for(cfg) if dtype == torch.float64 else LOW_PRECISION_TOL[dtype]
    assert e1.weight.dtype == o1.state[e1.weight]["exp_avg"].dtype == dtype
    torch.testing.assert_close(e1.weight, e2.weight, **tol)
    _assert_state_close(o1, o2, **tol)
    assert o1.state[e1.weight]["step"] == 40  # empty gradients count as steps
    assert not torch.equal(e1.weight, _table(dtype).weight)


def test_rows_never_looked_up_are_untouched():
    emb = _table()
    opt = INFO.cls(emb.parameters(), lr=0.05)
    _train(emb, opt, 40)
    torch.testing.assert_close(emb.weight[15:], _table().weight[15:], rtol=0, atol=0)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(opt.state[emb.weight][key][15:]) == 0


def test_lazy_update_follows_its_definition():
    """Dense arithmetic with a row mask: moments and parameters change only on
    the rows in the gradient; the bias corrections use the step count n."""
    lr, beta1, beta2, eps = 0.05, 0.8, 0.9, 1e-6
    emb = _table()
    opt = INFO.cls(emb.parameters(), lr=lr, betas=(beta1, beta2), eps=eps)
    x = emb.weight.detach().clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for n, ids in enumerate(_batches(12), start=1):
        opt.zero_grad()
        if ids is None:
            emb.weight.grad = _empty_grad(emb)
            opt.step()
            continue  # nothing moves; n still grows
        (emb(ids) - 0.5).pow(2).sum().backward()
        opt.step()
        g = emb.weight.grad.to_dense()
        rows = torch.zeros(ROWS, dtype=torch.bool)
        rows[ids.flatten()] = True
        m[rows] = beta1 * m[rows] + (1 - beta1) * g[rows]
        v[rows] = beta2 * v[rows] + (1 - beta2) * g[rows] ** 2
        step = lr * (1 - beta2**n) ** 0.5 / (1 - beta1**n)
        x[rows] -= step * m[rows] / (v[rows].sqrt() + eps)
    torch.testing.assert_close(emb.weight.detach(), x, rtol=1e-12, atol=1e-13)


def test_differs_from_dense_adam_on_rows_seen_once():
    """Dense Adam keeps moving a row after its last look-up (m decays but is
    not zero); lazy Adam leaves it where its last look-up put it."""
    e_lazy, e_dense = _table(), nn.Embedding(ROWS, DIM).double()
    with torch.no_grad():
        e_dense.weight.copy_(e_lazy.weight)
    o_lazy = INFO.cls(e_lazy.parameters(), lr=0.05)
    o_dense = optimizers.Adam(e_dense.parameters(), lr=0.05, eps=0.0)
    first = torch.tensor([3])
    for t in range(5):
        ids = first if t == 0 else torch.tensor([7])
        for e, o in ((e_lazy, o_lazy), (e_dense, o_dense)):
            o.zero_grad()
            e(ids).sum().backward()
            o.step()
        if t == 0:
            after_first = e_lazy.weight[3].detach().clone()
    torch.testing.assert_close(e_lazy.weight[3], after_first, rtol=0, atol=0)
    assert not torch.allclose(e_dense.weight[3], after_first)


def test_state_dict_resume_is_bit_identical():
    cfg = INFO.configs[-1]
    e_full = _table()
    _train(e_full, INFO.cls(e_full.parameters(), **cfg), 40)
    e = _table()
    o = INFO.cls(e.parameters(), **cfg)
    _train(e, o, 20)
    sd = _roundtrip(o.state_dict())
    o2 = INFO.cls(e.parameters(), **cfg)
    o2.load_state_dict(sd)
    assert type(o2.state[e.weight]["step"]) is int
    _train(e, o2, 40, start=20)
    assert torch.equal(e.weight, e_full.weight)


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_interchangeable_with_torch(direction):
    cfg = INFO.configs[-1]
    src, dst = (INFO.ref_cls, INFO.cls) if direction == "torch_to_ours" else (INFO.cls, INFO.ref_cls)
    e_ref = _table()
    o_ref = dst(e_ref.parameters(), **cfg)
    _train(e_ref, o_ref, 40)
    e = _table()
    o_src = src(e.parameters(), **cfg)
    _train(e, o_src, 20)
    o_dst = dst(e.parameters(), **cfg)
    o_dst.load_state_dict(_roundtrip(o_src.state_dict()))
    assert o_dst.state_dict()["param_groups"][0].keys() == o_ref.state_dict()["param_groups"][0].keys()
    _train(e, o_dst, 40, start=20)
    torch.testing.assert_close(e.weight, e_ref.weight, **TIGHT)
    _assert_state_close(o_dst, o_ref, **TIGHT)


def test_param_groups_and_scheduler_match_torch():
    def run(cls):
        e1, e2 = _table(seed=0), _table(seed=1)
        opt = cls([{"params": e1.parameters()}, {"params": e2.parameters(), "lr": 0.01, "betas": (0.5, 0.9)}],
                  lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        for ids in _batches(30):
            opt.zero_grad()
            for e in (e1, e2):
                if ids is None:
                    e.weight.grad = _empty_grad(e)
                else:
                    (e(ids) - 0.5).pow(2).sum().backward()
            opt.step()
            sched.step()
        return e1.weight, e2.weight

    for a, b in zip(run(INFO.cls), run(INFO.ref_cls)):
        torch.testing.assert_close(a, b, **TIGHT)


def test_maximize_is_minimize_of_negated_loss():
    e1, e2 = _table(), _table()
    o1, o2 = INFO.cls(e1.parameters(), lr=0.05, maximize=True), INFO.cls(e2.parameters(), lr=0.05)
    _train(e1, o1, 20, sign=-1.0)
    _train(e2, o2, 20)
    assert torch.equal(e1.weight, e2.weight)


def test_closure_deepcopy_and_params_without_grad():
    emb, frozen = _table(), _table(seed=2)
    opt = INFO.cls([emb.weight, frozen.weight], lr=0.05)
    ids = torch.tensor([1, 2, 2])

    def closure():
        opt.zero_grad()
        loss = emb(ids).pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.ndim == 0
    assert frozen.weight not in opt.state or len(opt.state[frozen.weight]) == 0
    assert torch.equal(frozen.weight, _table(seed=2).weight)
    (emb2, opt2) = copy.deepcopy((emb, opt))
    opt.step(closure)
    opt2.zero_grad()
    emb2(ids).pow(2).sum().backward()
    opt2.step()
    assert torch.equal(emb.weight, emb2.weight)


def test_dense_gradient_is_refused_like_torch():
    for cls in (INFO.ref_cls, INFO.cls):
        w = nn.Parameter(torch.zeros(3, 2))
        w.grad = torch.ones(3, 2)
        with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
            cls([w]).step()


@pytest.mark.parametrize("kind", ["sparse", "complex"])
@pytest.mark.parametrize("grouped", [False, True], ids=["list", "groups"])
def test_sparse_or_complex_params_are_refused_like_torch(kind, grouped):
    bad = (torch.zeros(3, layout=torch.sparse_coo) if kind == "sparse"
           else torch.zeros(2, 3, dtype=torch.complex64))
    params = [{"params": [bad]}] if grouped else [bad]
    regex = ("SparseAdam requires dense parameter tensors" if kind == "sparse"
             else "SparseAdam does not support complex parameters")
    for cls in (INFO.ref_cls, INFO.cls):
        with pytest.raises(ValueError, match=regex) as err:
            cls(params)
    assert str(err.value).startswith("Invalid params") and "must" in str(err.value)


def test_a_row_first_seen_late_gets_the_tables_bias_correction():
    """A row's first update at step n is lr sqrt(1 - beta2^n) / (1 - beta1^n) (1 - beta1) / sqrt(1 - beta2)
    per coordinate: for n >> 1/(1 - beta2) that is 3.16 lr with the default betas, not Adam's lr."""
    lr = 1e-3
    emb = _table()
    opt = INFO.cls(emb.parameters(), lr=lr)
    for _ in range(2000):  # only row 0 is looked up
        opt.zero_grad()
        emb(torch.tensor([0])).sum().backward()
        opt.step()
    before = emb.weight[5].detach().clone()
    opt.zero_grad()
    emb(torch.tensor([5])).sum().backward()
    opt.step()
    moved = (before - emb.weight[5]).detach()
    n, beta1, beta2 = 2001, 0.9, 0.999
    expected = lr * (1 - beta2**n) ** 0.5 / (1 - beta1**n) * (1 - beta1) / (1 - beta2) ** 0.5
    torch.testing.assert_close(moved, torch.full((DIM,), expected, dtype=torch.float64), rtol=1e-6, atol=0)
    assert 2.9 * lr < expected < 3.0 * lr  # at n = 2001 the correction of v still shrinks it by 7%
