r"""Learning-rate schedules that ``torch.optim.lr_scheduler`` does not ship ready-made.

Torch already has step decay (``StepLR``), exponential decay (``ExponentialLR``), cosine
annealing (``CosineAnnealingLR``), warm restarts (``CosineAnnealingWarmRestarts``), the one-cycle
policy (``OneCycleLR``) and reduce-on-plateau (``ReduceLROnPlateau``); this module does not
re-implement any of them. It adds the one schedule that is assembled by hand in almost every
transformer training script, linear warmup followed by cosine decay, as a validated
:class:`torch.optim.lr_scheduler.LambdaLR`:

.. math::

    \eta_t = \begin{cases}
        \eta\,\bigl(s + (1 - s)\,t / W\bigr) & 0 \le t < W \\
        \eta_{\min} + \tfrac12(\eta - \eta_{\min})
            \bigl(1 + \cos(\pi\,(t - W)/(T - W))\bigr) & W \le t \le T \\
        \eta_{\min} & t > T
    \end{cases}

with :math:`\eta` a param group's initial ``lr``, :math:`W` ``warmup_steps``, :math:`T`
``total_steps``, :math:`s` ``warmup_start_factor`` and :math:`\eta_{\min}` the group's floor
(``min_lr``, or ``min_lr_ratio`` times :math:`\eta`). :math:`t` is the number of
``scheduler.step()`` calls so far (the scheduler's ``last_epoch``): the optimizer step number
``t`` uses :math:`\eta_t`, counting from 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ._base import _real_number

__all__ = ["warmup_cosine", "WarmupCosineFactor"]


class WarmupCosineFactor:
    r"""The multiplier :math:`\eta_t/\eta` of :func:`warmup_cosine` for one param group.

    A callable object rather than a lambda so that ``LambdaLR.state_dict()`` saves its
    attributes (torch saves the ``__dict__`` of callable objects, not of functions) and a
    restored scheduler continues the same schedule.
    """

    def __init__(self, warmup_steps: int, total_steps: int, start_factor: float,
                 min_factor: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.start_factor = start_factor
        self.min_factor = min_factor

    def __call__(self, t: int) -> float:
        W, T = self.warmup_steps, self.total_steps
        if t < W:
            return self.start_factor + (1.0 - self.start_factor) * t / W
        if t >= T:
            return self.min_factor
        cos = 0.5 * (1.0 + math.cos(math.pi * (t - W) / (T - W)))
        return self.min_factor + (1.0 - self.min_factor) * cos

    def __repr__(self) -> str:
        return (f"WarmupCosineFactor(warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps}, start_factor={self.start_factor!r}, "
                f"min_factor={self.min_factor!r})")


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {lo})")
    if value < lo:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {lo})")
    return int(value)


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr: float | Sequence[float] = 0.0,
    warmup_start_factor: float = 0.0,
    *,
    min_lr_ratio: float | None = None,
    last_epoch: int = -1,
) -> LambdaLR:
    r"""Linear warmup for ``warmup_steps`` steps, then cosine decay to a floor at ``total_steps``.

    Returns a :class:`torch.optim.lr_scheduler.LambdaLR` (one :class:`WarmupCosineFactor` per
    param group), to be stepped once per optimizer step, after ``optimizer.step()``. The
    learning rate of optimizer step ``t`` (counting from 0) is

    * ``lr * (s + (1 - s) * t / W)`` for ``t < W`` (linear warmup from ``s * lr``);
    * ``min + (lr - min) * (1 + cos(pi * (t - W) / (T - W))) / 2`` for ``W <= t <= T``;
    * ``min`` for ``t > T`` (it stays at the floor; ``CosineAnnealingLR`` would rise again).

    Each param group uses its own initial ``lr``, so groups with different learning rates keep
    their ratios during warmup; the floor is either absolute (``min_lr``, one value or one per
    group, like ``eta_min``/``ReduceLROnPlateau``'s ``min_lr``) or relative (``min_lr_ratio``).

    Equivalent to ``SequentialLR([LinearLR(start_factor=s, total_iters=W),
    CosineAnnealingLR(T_max=T-W, eta_min=min)], milestones=[W])`` up to round-off, except that
    ``warmup_start_factor=0`` is allowed here (``LinearLR`` needs ``start_factor > 0``), the
    floor may differ between groups, and the rate stays at the floor after ``T``.

    Args:
        optimizer: the wrapped optimizer (any :class:`torch.optim.Optimizer`).
        warmup_steps: ``W >= 0``; 0 means no warmup.
        total_steps: ``T > W``, the step at which the floor is reached.
        min_lr: absolute floor ``>= 0`` (a float, or a sequence with one value per param
            group); each must not exceed its group's ``lr`` (default: 0).
        warmup_start_factor: ``s`` in ``[0, 1]``: the first step uses ``s * lr`` (default: 0,
            the common convention; the first step then has learning rate 0).
        min_lr_ratio: floor as a fraction of each group's ``lr``, in ``[0, 1]``; give either this
            or a nonzero ``min_lr``, not both.
        last_epoch: passed to ``LambdaLR`` (``-1`` starts the schedule; other values only when
            resuming, see torch's ``LRScheduler``).

    Raises:
        TypeError: ``optimizer`` is not a torch optimizer.
        ValueError: a parameter is out of range; the message names it.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"Invalid optimizer: {type(optimizer).__name__} (must be a "
                        "torch.optim.Optimizer)")
    W = _check_int("warmup_steps", warmup_steps, 0)
    T = _check_int("total_steps", total_steps, 1)
    if T <= W:
        raise ValueError(f"Invalid total_steps: {total_steps!r} (must be > warmup_steps = {W})")
    s = _real_number("warmup_start_factor", warmup_start_factor)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"Invalid warmup_start_factor: {warmup_start_factor!r} "
                         "(must be in [0, 1])")

    groups = optimizer.param_groups
    key = "initial_lr" if last_epoch != -1 else "lr"
    base_lrs = []
    for i, g in enumerate(groups):
        if key not in g:
            raise ValueError(f"Invalid optimizer: param_groups[{i}] has no {key!r} "
                             f"(needed with last_epoch={last_epoch})")
        base_lrs.append(_real_number(f"param_groups[{i}]['{key}']", g[key]))

    if min_lr_ratio is not None:
        if isinstance(min_lr, (int, float)) and not isinstance(min_lr, bool) and min_lr == 0:
            r = _real_number("min_lr_ratio", min_lr_ratio)
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"Invalid min_lr_ratio: {min_lr_ratio!r} (must be in [0, 1])")
            min_factors = [r] * len(groups)
        else:
            raise ValueError(f"Invalid min_lr: {min_lr!r} (give either min_lr or min_lr_ratio, "
                             "not both)")
    else:
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(groups):
                raise ValueError(f"Invalid min_lr: {len(min_lr)} values for {len(groups)} "
                                 "param groups (must be one value, or one per param group)")
            floors = [_real_number(f"min_lr[{i}]", m) for i, m in enumerate(min_lr)]
        else:
            floors = [_real_number("min_lr", min_lr)] * len(groups)
        min_factors = []
        for i, (m, base) in enumerate(zip(floors, base_lrs)):
            if m < 0:
                raise ValueError(f"Invalid min_lr: {m!r} (must be >= 0)")
            if m > base:
                raise ValueError(f"Invalid min_lr: {m!r} (must be <= the lr {base!r} of "
                                 f"param_groups[{i}]; use min_lr_ratio for groups with "
                                 "different learning rates)")
            min_factors.append(m / base if base > 0 else 0.0)

    factors: list[Callable[[int], float]] = [WarmupCosineFactor(W, T, s, mf) for mf in min_factors]
    return LambdaLR(optimizer, factors, last_epoch=last_epoch)
