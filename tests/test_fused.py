"""``fused=True`` for the optimizers torch ships no fused kernel for (optimizers._base._compiled_per_tensor).

tests/test_optimizers.py compares every such optimizer's fused step with its single-tensor
step through AOTAutograd's graph (``aot_eager``, fast); here inductor itself generates
and runs the code, on two optimizers (compiling takes seconds per kernel on a small
machine), with a learning rate that changes every step: the compiled kernels must follow
it without compiling again. Also: complex parameters, the tensors that take the eager
path, and the refusals.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import optimizers
from optimizers import _base


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _run(opt, params, steps, seed=1, lr_of_step=None):
    gen = torch.Generator().manual_seed(seed)
    for k in range(steps):
        if lr_of_step is not None:
            for group in opt.param_groups:
                group["lr"] = lr_of_step(k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


def _clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


# a large tensor (the compiled path), a second large one of another shape (the same
# graph: its length is a dynamic size), a small one (the eager path)
SHAPES = [(180, 200), (40000,), (7, 3)]


@pytest.mark.parametrize(
    "cls,cfg",
    # (no weight decay: where g + lambda * theta nearly cancels, RMSprop's g / sqrt(v)
    # turns the last bit of an fma into a large relative change; the catalogue's
    # parity test in tests/test_optimizers.py covers weight decay on a short run)
    [(optimizers.RMSprop, dict(lr=1e-2, momentum=0.9)), (optimizers.NAdam, dict(lr=1e-2, weight_decay=0.1))],
    ids=["RMSprop", "NAdam"],
)
def test_inductor_fused_matches_single_tensor_with_a_changing_lr(cls, cfg):
    ps1 = _params(SHAPES)
    ps2 = _clone(ps1)
    o1, o2 = cls(ps1, **cfg, fused=True), cls(ps2, **cfg, foreach=False)
    lr_of_step = lambda k: cfg["lr"] / (1 + k)  # noqa: E731  (a schedule: new value every step)
    _run(o1, ps1, 2, lr_of_step=lr_of_step)  # compiles
    graphs = counters["stats"]["unique_graphs"]
    _run(o1, ps1, 4, seed=2, lr_of_step=lambda k: lr_of_step(k + 2))
    assert counters["stats"]["unique_graphs"] == graphs  # no new graph for new lrs and steps
    _run(o2, ps2, 2, lr_of_step=lr_of_step)
    _run(o2, ps2, 4, seed=2, lr_of_step=lambda k: lr_of_step(k + 2))
    # round-off: inductor contracts a * b + c into an fma, which changes the last bit
    # (the tolerance of tests/test_compile.py)
    for a, b in zip(ps1, ps2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(o1.state.values(), o2.state.values()):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(ps1[0], _params(SHAPES)[0])


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setitem(_base._FUSED_COMPILE_OPTIONS, "backend", "aot_eager")


def test_complex_and_non_contiguous_params_match_single_tensor(aot_eager):
    """A complex parameter enters as its real view; a non-contiguous one (no 1-D view)
    takes the eager path; both end where the single-tensor path ends."""
    def make():
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(200, 200, dtype=torch.complex64, generator=gen).requires_grad_()
        t = torch.randn(300, 200, generator=gen).t().requires_grad_()  # transposed
        return [z, t]

    ps1, ps2 = make(), make()
    assert not ps1[1].is_contiguous()
    o1 = optimizers.Adamax(ps1, lr=1e-2, fused=True)
    o2 = optimizers.Adamax(ps2, lr=1e-2, foreach=False)
    _run(o1, ps1, 3)
    _run(o2, ps2, 3)
    for a, b in zip(ps1, ps2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = optimizers.RMSprop(emb.parameters(), fused=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("name", ["RMSprop", "NAdam", "Adamax", "Rprop", "ASGD"])
def test_fused_with_differentiable_raises_torchs_error(name):
    cls = getattr(optimizers, name)
    with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
        cls([torch.nn.Parameter(torch.zeros(2))], fused=True, differentiable=True)


def test_fused_with_foreach_is_refused():
    with pytest.raises(ValueError, match="Invalid fused: True with foreach=True"):
        optimizers.Lion([torch.nn.Parameter(torch.zeros(2))], fused=True, foreach=True)


def test_params_on_a_device_without_compiled_kernels_are_refused():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = optimizers.Yogi([p], fused=True)
    p.grad = torch.zeros_like(p)
    with pytest.raises(RuntimeError, match=r"Yogi with fused=True requires floating-point or complex params on one of \['cpu', 'cuda'\]"):
        opt.step()


def test_a_hyperparameter_changed_every_step_is_refused_after_the_kernel_limit(aot_eager, monkeypatch):
    """Options other than lr are compiled in: each new value is a new kernel, and the
    mechanism stops with an explanation instead of compiling at every step."""
    monkeypatch.setattr(_base, "_FUSED_MAX_KERNELS", 2)
    ps = _params([(200, 200)])
    opt = optimizers.Lion(ps, fused=True)
    with pytest.raises(RuntimeError, match="fused=True has compiled 2 kernels for _single_tensor_lion"):
        for k in range(5):
            opt.param_groups[0]["betas"] = (0.9, 0.99 - 0.001 * k)
            _run(opt, ps, 1, seed=k)
