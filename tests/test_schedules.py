"""optimizers.warmup_cosine: sequence, torch equivalence, state dicts, param groups, validation."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

import optimizers


def closed_form(base, t, W, T, s=0.0, m=0.0):
    if t < W:
        return base * (s + (1 - s) * t / W)
    if t >= T:
        return m
    return m + (base - m) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))


def make_opt(lrs=(0.1,), cls=None):
    torch.manual_seed(0)
    groups = [{"params": [torch.nn.Parameter(torch.randn(3, dtype=torch.float64))], "lr": lr}
              for lr in lrs]
    return (cls or optimizers.SGD)(groups, lr=lrs[0])


def drive(opt, sched, steps):
    """Record every group's lr used by `steps` optimizer steps (quadratic loss)."""
    out = []
    for _ in range(steps):
        opt.zero_grad()
        sum((p ** 2).sum() for g in opt.param_groups for p in g["params"]).backward()
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return np.array(out)


@pytest.mark.parametrize("W,T,s,m", [(0, 10, 0.0, 0.0), (5, 30, 0.0, 0.0), (5, 30, 0.1, 1e-3),
                                     (1, 2, 0.5, 0.0), (10, 11, 0.0, 0.05)])
def test_sequence_equals_closed_form(W, T, s, m):
    opt = make_opt()
    sched = optimizers.warmup_cosine(opt, W, T, min_lr=m, warmup_start_factor=s)
    lrs = drive(opt, sched, T + 5)[:, 0]
    expected = [closed_form(0.1, t, W, T, s, m) for t in range(T + 5)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-13, atol=1e-16)
    assert lrs[-1] == pytest.approx(m)  # stays at the floor after total_steps


def test_matches_torch_sequential_linear_cosine():
    W, T, s, m = 4, 20, 0.25, 1e-3
    opt_a, opt_b = make_opt(), make_opt()
    ours = optimizers.warmup_cosine(opt_a, W, T, min_lr=m, warmup_start_factor=s)
    ref = SequentialLR(opt_b, [LinearLR(opt_b, start_factor=s, total_iters=W),
                               CosineAnnealingLR(opt_b, T_max=T - W, eta_min=m)], milestones=[W])
    np.testing.assert_allclose(drive(opt_a, ours, T + 1), drive(opt_b, ref, T + 1),
                               rtol=1e-12, atol=1e-16)


def test_param_groups_with_different_lrs():
    lrs = (0.1, 0.01, 0.003)
    opt = make_opt(lrs)
    sched = optimizers.warmup_cosine(opt, 3, 12, min_lr_ratio=0.1, warmup_start_factor=0.2)
    got = drive(opt, sched, 15)
    for j, lr in enumerate(lrs):
        expected = [closed_form(lr, t, 3, 12, 0.2, 0.1 * lr) for t in range(15)]
        np.testing.assert_allclose(got[:, j], expected, rtol=1e-13)
    # per-group absolute floors
    opt = make_opt(lrs)
    sched = optimizers.warmup_cosine(opt, 3, 12, min_lr=[1e-3, 1e-4, 0.0])
    got = drive(opt, sched, 15)
    np.testing.assert_allclose(got[-1], [1e-3, 1e-4, 0.0], atol=1e-16)


def test_state_dict_round_trip():
    W, T = 5, 25
    opt = make_opt((0.1, 0.02), cls=optimizers.AdamW)
    sched = optimizers.warmup_cosine(opt, W, T, min_lr_ratio=0.05)
    first = drive(opt, sched, 9)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    rest_ref = drive(opt, sched, T - 9 + 3)

    # a fresh scheduler built with other settings picks up the saved ones
    opt2 = make_opt((0.1, 0.02), cls=optimizers.AdamW)
    sched2 = optimizers.warmup_cosine(opt2, 1, 2)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert sched2.lr_lambdas[0].warmup_steps == W and sched2.lr_lambdas[0].total_steps == T
    np.testing.assert_array_equal(drive(opt2, sched2, T - 9 + 3), rest_ref)
    assert first.shape == (9, 2)


def test_deepcopy_and_repr():
    opt = make_opt()
    sched = optimizers.warmup_cosine(opt, 2, 10)
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    assert "WarmupCosineFactor(warmup_steps=2" in repr(sched.lr_lambdas[0])
    copy.deepcopy(sched.state_dict())


def test_first_lr_set_on_construction():
    opt = make_opt((0.2,))
    optimizers.warmup_cosine(opt, 4, 10, warmup_start_factor=0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[0]["initial_lr"] == 0.2


@pytest.mark.parametrize("kwargs,match", [
    (dict(warmup_steps=-1, total_steps=10), "warmup_steps"),
    (dict(warmup_steps=2.5, total_steps=10), "warmup_steps"),
    (dict(warmup_steps=True, total_steps=10), "warmup_steps"),
    (dict(warmup_steps=10, total_steps=10), "total_steps"),
    (dict(warmup_steps=0, total_steps=0), "total_steps"),
    (dict(warmup_steps=2, total_steps=10, warmup_start_factor=1.5), "warmup_start_factor"),
    (dict(warmup_steps=2, total_steps=10, warmup_start_factor=float("nan")), "warmup_start_factor"),
    (dict(warmup_steps=2, total_steps=10, min_lr=-1e-3), "min_lr"),
    (dict(warmup_steps=2, total_steps=10, min_lr=0.5), "min_lr"),
    (dict(warmup_steps=2, total_steps=10, min_lr=[0.0, 0.0]), "min_lr"),
    (dict(warmup_steps=2, total_steps=10, min_lr="0"), "min_lr"),
    (dict(warmup_steps=2, total_steps=10, min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(warmup_steps=2, total_steps=10, min_lr=1e-3, min_lr_ratio=0.1), "min_lr"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimizers.warmup_cosine(make_opt(), **kwargs)


def test_not_an_optimizer():
    with pytest.raises(TypeError, match="optimizer"):
        optimizers.warmup_cosine([torch.zeros(1)], 1, 2)
