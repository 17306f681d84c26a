"""Record trajectories of NumPy update rules and of torch optimizers on the same problem.

A chapter writes its update rule as a pure NumPy function; these loops only iterate it and
stack the iterates, so that a whole trajectory can be compared with ``np.testing.assert_allclose``.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

__all__ = ["numpy_trajectory", "torch_trajectory", "losses_along"]


def numpy_trajectory(step: Callable, x0, grad: Callable, steps: int, state=None) -> np.ndarray:
    """Iterate ``x, state = step(x, grad(x), state)`` and return all iterates.

    Args:
        step: the update rule, ``step(x, g, state) -> (x_new, state_new)``. Stateless rules may
            ignore ``state`` and return it unchanged.
        x0: starting point.
        grad: gradient oracle, ``grad(x) -> g``.
        steps: number of updates.
        state: the rule's initial state (for example a zero momentum buffer).

    Returns:
        Array of shape ``(steps + 1, d)``; row ``t`` is the iterate after ``t`` updates.
    """
    x = np.array(x0, dtype=np.float64)
    out = [x.copy()]
    for _ in range(steps):
        x, state = step(x, grad(x), state)
        out.append(np.array(x, dtype=np.float64))
    return np.stack(out)


def torch_trajectory(make_optimizer: Callable, f: Callable, x0, steps: int,
                     dtype=None, return_losses: bool = False):
    """Run a ``torch.optim.Optimizer`` on ``f`` from ``x0`` and return all iterates.

    The gradient comes from autograd on ``f``, not from an analytic formula, so agreement with a
    NumPy trajectory also checks the chapter's hand-derived gradient.

    Args:
        make_optimizer: called with ``[x]`` (a list holding the single parameter tensor); returns
            the optimizer, e.g. ``lambda p: optimizers.SGD(p, lr=0.1)``.
        f: the objective, accepting a tensor.
        x0: starting point.
        steps: number of ``optimizer.step()`` calls.
        dtype: torch dtype of the parameter (default ``torch.float64``).
        return_losses: also return the loss before each step.
    """
    import torch

    dtype = torch.float64 if dtype is None else dtype
    x = torch.tensor(np.asarray(x0, dtype=np.float64), dtype=dtype, requires_grad=True)
    opt = make_optimizer([x])
    out = [x.detach().to(torch.float64).numpy().copy()]
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
        out.append(x.detach().to(torch.float64).numpy().copy())
    traj = np.stack(out)
    return (traj, np.array(losses)) if return_losses else traj


def losses_along(f: Callable, trajectory: Iterable) -> np.ndarray:
    """Evaluate ``f`` at every iterate of a trajectory."""
    return np.array([float(f(np.asarray(x))) for x in trajectory])

