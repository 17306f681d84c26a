"""Lion-specific tests (the generic behaviour is covered through tests/optim_catalogue.py).

* optimizers.Lion equals lion_pytorch.Lion (lucidrains, 0.2.5), both its loop and its
  foreach class, in float64 on a small network: default configuration, weight decay,
  other betas and a learning rate that changes between steps;
* the defaults are the reference's; the step before decay is exactly +-lr per coordinate;
* betas = (0, beta2) is signSGD; complex parameters are pairs of real ones;
* the functional core is the class.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import optimizers
from reference_problem import make_model as _make_model
from reference_problem import minibatches as _minibatches
from reference_problem import run_model
from optimizers.lion import lion

lion_pytorch = pytest.importorskip("lion_pytorch")
from lion_pytorch.foreach import Lion as RefLionForeach  # noqa: E402

RefLion = lion_pytorch.Lion
TOL = dict(rtol=1e-12, atol=1e-14)


def make_model(seed: int = 0):
    return _make_model(seed, n_in=6, hidden=12)


def minibatches(steps: int, seed: int = 1):
    return _minibatches(steps, seed, n_in=6)


CONFIGS = {
    "default": {},
    "weight_decay": {"lr": 3e-4, "weight_decay": 0.5},
    "betas": {"lr": 1e-3, "betas": (0.95, 0.98), "weight_decay": 0.1},
}


@pytest.mark.parametrize("ref_cls", [RefLion, RefLionForeach], ids=["ref_loop", "ref_foreach"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_matches_lion_pytorch(cfg, foreach, ref_cls):
    batches = minibatches(150)
    ours_model, ref_model = make_model(), make_model()
    ours = optimizers.Lion(ours_model.parameters(), foreach=foreach, **cfg)
    ref = ref_cls(ref_model.parameters(), **cfg)
    run_model(ours_model, ours, batches)
    run_model(ref_model, ref, batches)
    start = make_model()
    for p, q, p0 in zip(ours_model.parameters(), ref_model.parameters(), start.parameters()):
        torch.testing.assert_close(p, q, **TOL)
        torch.testing.assert_close(ours.state[p]["exp_avg"], ref.state[q]["exp_avg"], **TOL)
        assert ours.state[p]["step"].item() == 150
        assert not torch.allclose(p, p0)  # the run moved the parameters


def test_matches_lion_pytorch_with_changing_lr():
    """A scheduled lr: the decay factor 1 - lr * wd follows the current lr in both."""
    batches = minibatches(80)
    schedule = lambda k: 1e-3 * (1 - k / 100)  # noqa: E731
    ours_model, ref_model = make_model(), make_model()
    ours = optimizers.Lion(ours_model.parameters(), lr=1e-3, weight_decay=0.3)
    ref = RefLion(ref_model.parameters(), lr=1e-3, weight_decay=0.3)
    run_model(ours_model, ours, batches, schedule)
    run_model(ref_model, ref, batches, schedule)
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, **TOL)


def test_defaults_are_the_reference_defaults():
    ours = inspect.signature(optimizers.Lion.__init__).parameters
    ref = inspect.signature(RefLion.__init__).parameters
    for name in ("lr", "betas", "weight_decay"):
        assert ours[name].default == ref[name].default, name


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_step_is_plus_minus_lr_per_coordinate(foreach):
    """Without weight decay each coordinate moves by exactly lr (or 0), whatever the gradient scale."""
    gen = torch.Generator().manual_seed(3)
    # integer start and a power-of-two lr: every move and difference is exact
    x = torch.randint(-100, 100, (1000,), generator=gen).to(torch.float64).requires_grad_()
    opt = optimizers.Lion([x], lr=0.25, foreach=foreach)
    for scale in (1e-6, 1.0, 1e6):
        before = x.detach().clone()
        x.grad = scale * torch.randn(1000, dtype=torch.float64, generator=gen)
        opt.step()
        moves = (x.detach() - before).abs()
        assert set(moves.unique().tolist()) <= {0.0, 0.25}
        assert (moves == 0.25).float().mean() > 0.99


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_beta1_zero_is_sign_sgd(foreach):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(50, dtype=torch.float64, generator=gen).requires_grad_()
    y = x.detach().clone()
    opt = optimizers.Lion([x], lr=0.01, betas=(0.0, 0.9), weight_decay=0.2, foreach=foreach)
    for _ in range(20):
        g = torch.randn(50, dtype=torch.float64, generator=gen)
        x.grad = g.clone()
        opt.step()
        y = y * (1 - 0.01 * 0.2) - 0.01 * torch.sign(g)
        torch.testing.assert_close(x.detach(), y, **TOL)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_complex_params_are_pairs_of_real_ones(foreach):
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(8, dtype=torch.complex128, generator=gen).requires_grad_()
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    oz = optimizers.Lion([z], lr=1e-2, weight_decay=0.1, foreach=foreach)
    orr = optimizers.Lion([r], lr=1e-2, weight_decay=0.1, foreach=foreach)
    for _ in range(10):
        g = torch.randn(8, dtype=torch.complex128, generator=gen)
        z.grad, r.grad = g.clone(), torch.view_as_real(g).clone()
        oz.step()
        orr.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), **TOL)


def test_functional_core_is_the_class():
    batches = minibatches(30)
    model, manual = make_model(), make_model()
    opt = optimizers.Lion(model.parameters(), lr=1e-3, weight_decay=0.1)
    run_model(model, opt, batches)
    params = list(manual.parameters())
    exp_avgs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    for xb, yb in batches:
        for p in params:
            p.grad = None
        ((manual(xb) - yb) ** 2).mean().backward()
        with torch.no_grad():
            lion(params, [p.grad for p in params], exp_avgs, steps, lr=1e-3, weight_decay=0.1)
    for p, q in zip(model.parameters(), params):
        torch.testing.assert_close(p, q, **TOL)


def test_one_state_buffer_per_parameter():
    """Lion's state: one tensor the size of the parameter (Adam keeps two) plus the step counter."""
    model = make_model()
    opt = optimizers.Lion(model.parameters())
    run_model(model, opt, minibatches(2))
    for p in model.parameters():
        full = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.dim() > 0]
        assert len(full) == 1 and full[0].shape == p.shape
