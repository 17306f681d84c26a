"""The small regression problem on which optimizers are compared with a reference implementation.

A seeded tanh network and a fixed sequence of noisy minibatches, so that gradients change size
from step to step (second moments move both ways) and two runs see exactly the same data.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def make_model(seed: int = 0, dtype=torch.float64, n_in: int = 5, hidden: int = 16) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model.to(dtype)


def minibatches(steps: int, seed: int = 1, dtype=torch.float64, n_in: int = 5, batch: int = 16):
    """``steps`` minibatches of ``batch`` rows drawn from 256 noisy samples of sin."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(256, n_in, generator=gen, dtype=dtype)
    Y = torch.sin(X[:, :3]) + 0.3 * torch.randn(256, 3, generator=gen, dtype=dtype)
    idx = torch.randint(0, 256, (steps, batch), generator=gen)
    return [(X[i], Y[i]) for i in idx]


def run_model(model, opt, batches, lr_schedule: Callable[[int], float] | None = None) -> None:
    """One step per minibatch on the mean squared error; ``lr_schedule(k)`` sets every group's lr."""
    for k, (xb, yb) in enumerate(batches):
        if lr_schedule is not None:
            for group in opt.param_groups:
                group["lr"] = lr_schedule(k)
        opt.zero_grad()
        ((model(xb) - yb) ** 2).mean().backward()
        opt.step()
