r"""Stochastic gradient descent, with heavy-ball or Nesterov momentum.

The class :class:`SGD` is a drop-in replacement for :class:`torch.optim.SGD`
(same arguments, defaults, state and trajectory); :func:`sgd` is its
functional core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    _foreach_flag,
    _foreach_l2_grads,
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _group_by_device_and_dtype,
    _real_number,
    _resolve_impl,
    _foreach_add_scaled_,
)
from ._torch_phrases import check_lr, check_nonnegative

__all__ = ["SGD", "sgd"]


class SGD(OptimizerBase):
    r"""Stochastic gradient descent, optionally with momentum (heavy ball or Nesterov).

    The symbols are those of the book (chapters 1 to 3): :math:`\theta_t` the
    parameters after :math:`t` steps (:math:`t = 0, 1, \dots`), :math:`g_t` the
    gradient evaluated at :math:`\theta_t`, :math:`\eta` the learning rate
    ``lr``, :math:`\lambda` ``weight_decay``, :math:`\beta` ``momentum`` and
    :math:`\tau` ``dampening``. Step :math:`t` (the :math:`(t+1)`-th call of
    :meth:`step`) does

    .. math::

        g_t &= \pm\nabla f(\theta_t) + \lambda\,\theta_t
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        b_{t+1} &= \begin{cases} g_0 & t = 0 \\
                             \beta\, b_t + (1-\tau)\, g_t & t \ge 1 \end{cases} \\
        d_t &= \begin{cases} g_t & \beta = 0 \\
                             b_{t+1} & \beta \neq 0,\ \text{not nesterov} \\
                             g_t + \beta\, b_{t+1} & \text{nesterov} \end{cases} \\
        \theta_{t+1} &= \theta_t - \eta\, d_t

    Conventions (those of ``torch.optim.SGD``; textbooks differ):

    * **Undamped momentum, lr outside.** The buffer accumulates raw gradients,
      :math:`b_{t+1} = \beta b_t + g_t`, and the learning rate multiplies the
      buffer when it is applied. Sutskever et al. (2013) write
      :math:`u_{t+1} = \beta u_t - \eta g_t` instead; the two agree while
      :math:`\eta` is constant and differ when a schedule changes it.
    * **First-step copy.** The buffer starts as :math:`b_1 = g_0`, not as
      :math:`0`: there is no bias towards zero, and dampening
      :math:`(1-\tau)` is applied only from the second step on.
    * **Nesterov reformulation.** :math:`d_t = g_t + \beta b_{t+1}` is
      Nesterov's look-ahead rewritten in terms of the current parameters
      (Sutskever et al., 2013; Bengio et al., 2013): the stored
      :math:`\theta_t` are the look-ahead points. It requires
      :math:`\beta > 0` and :math:`\tau = 0`.
    * **Coupled weight decay.** :math:`\lambda\theta_t` is added to the
      gradient (an L2 penalty), so it enters the momentum buffer.

    State per parameter: ``momentum_buffer`` (:math:`b_{t+1}` after step
    :math:`t`, created at the first step, only when :math:`\beta \neq 0`).
    Sparse gradients are supported
    (single-tensor path; a foreach call falls back to it for those tensors).

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-3).
        momentum: momentum factor :math:`\beta \ge 0` (default: 0).
        dampening: dampening :math:`\tau` for momentum (default: 0).
        weight_decay: L2 penalty :math:`\lambda \ge 0` (default: 0).
        nesterov: use Nesterov momentum (default: False).
        maximize: maximize the objective instead of minimizing (default: False).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU, where it is
            faster for large models (see ``benchmarks/results/step_times.md``).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: use torch's fused kernel ``torch._fused_sgd_`` (default: None).

    Reference:
        Sutskever, Martens, Dahl, Hinton (2013), *On the importance of
        initialization and momentum in deep learning*, ICML.
        Polyak (1964), *Some methods of speeding up the convergence of
        iteration methods*.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> model(torch.ones(1, 3)).sum().backward()
        >>> opt.step()
    """

    _differentiable_supported = True
    _supports_sparse = True
    _fused_supported = True
    _group_fallbacks = {"nesterov": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative("momentum", momentum)
        _real_number("dampening", dampening)
        check_nonnegative("weight_decay", weight_decay)
        if nesterov and not momentum > 0:
            raise ValueError(
                f"Invalid momentum: {momentum!r} (must be > 0 when nesterov=True)"
            )
        if nesterov and dampening != 0:
            raise ValueError(
                f"Invalid dampening: {dampening!r} (must be 0 when nesterov=True)"
            )
        _check_impl_flags(
            "SGD",
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
            differentiable_supported=True,
            fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        # complex parameters need no special handling in SGD's update
        params, grads, has_sparse, _ = self._gather(group, detect_complex=False)
        uses_momentum = group["momentum"] != 0
        # The buffer is created by the functional core at the first step, so
        # a missing one is passed as None (and no state is created without
        # momentum, exactly as torch.optim.SGD).
        buffers = (
            [self.state[p].get("momentum_buffer") for p in params] if uses_momentum else []
        )
        sgd(
            params,
            grads,
            buffers,
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group, foreach_differentiable=True),
            fused=group["fused"],
            has_sparse_grad=has_sparse,
        )
        if uses_momentum:
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float | Tensor = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float | Tensor = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_sparse_grad: bool | None = None,
) -> None:
    r"""Functional SGD: update ``params`` in place (see :class:`SGD` for the equations).

    Args:
        params, grads: parallel lists of parameters and their gradients.
        momentum_buffers: the buffers :math:`b_t`, one per parameter
            (``None`` before the first step); ignored, and may be empty, when
            ``momentum == 0``. ``None`` entries are replaced in the list by the
            newly created buffers.
        foreach, fused: implementation choice, as in :class:`SGD`.
        has_sparse_grad: whether some gradient is sparse (computed if None).
    """
    if has_sparse_grad is None:
        has_sparse_grad = any(g.is_sparse for g in grads)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_sgd, "foreach": _multi_tensor_sgd, "fused": _fused_sgd}[impl]
    func(
        params,
        grads,
        momentum_buffers,
        lr=_as_float(lr),
        momentum=momentum,
        dampening=dampening,
        weight_decay=_as_float(weight_decay),
        nesterov=nesterov,
        maximize=maximize,
        has_sparse_grad=has_sparse_grad,
    )


def _single_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    has_sparse_grad: bool,
) -> None:
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_{t-1}

        if momentum != 0:
            m = momentum_buffers[i]
            if m is None:  # first step: m_1 = g_1 (no dampening)
                m = torch.clone(g).detach()
                momentum_buffers[i] = m
            else:  # m_t = mu * m_{t-1} + (1 - tau) * g_t
                m.mul_(momentum).add_(g, alpha=1 - dampening)
            d = g.add(m, alpha=momentum) if nesterov else m  # Nesterov: g_t + mu * m_t
        else:
            d = g

        theta.add_(d, alpha=-lr)  # theta_t = theta_{t-1} - eta * d_t


def _multi_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    has_sparse_grad: bool,
) -> None:
    if not params:
        return
    lists: list[Sequence[Tensor | None]] = [params, grads, momentum_buffers if momentum != 0 else []]
    buckets = _group_by_device_and_dtype(lists, with_indices=True)
    for (p_list, g_list, m_list), indices in buckets.values():
        if has_sparse_grad and any(g.is_sparse for g in g_list):
            # foreach kernels do not take sparse tensors: loop over this bucket.
            bufs = list(m_list) if momentum != 0 else []
            _single_tensor_sgd(
                p_list, g_list, bufs, lr=lr, momentum=momentum, dampening=dampening,
                weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                has_sparse_grad=True,
            )
            if momentum != 0:
                for j, buf in zip(indices, bufs):
                    momentum_buffers[j] = buf
            continue

        g_list = _foreach_l2_grads(p_list, g_list, maximize=maximize, weight_decay=weight_decay)

        if momentum != 0:
            if all(m is not None for m in m_list):
                bufs = list(m_list)
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, g_list, alpha=1 - dampening)
            else:  # some buffers start now: m_1 = g_1
                bufs = []
                for k, m in enumerate(m_list):
                    if m is None:
                        m = torch.clone(g_list[k]).detach()
                        momentum_buffers[indices[k]] = m
                    else:
                        m.mul_(momentum).add_(g_list[k], alpha=1 - dampening)
                    bufs.append(m)
            if nesterov:
                torch._foreach_add_(g_list, bufs, alpha=momentum)
            else:
                g_list = bufs

        _foreach_add_scaled_(p_list, g_list, -lr)


def _fused_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    has_sparse_grad: bool,
) -> None:
    if not params:
        return
    if has_sparse_grad:
        raise RuntimeError("SGD with fused=True does not support sparse gradients")
    # The kernel takes one is_first_step flag per call (m_1 = g_1 when True):
    # parameters whose buffer starts now go in a separate call.
    parts: list[tuple[list[Tensor], list[Tensor], list[Tensor | None], bool]]
    if momentum == 0:
        parts = [(params, grads, [], False)]
    else:
        missing = [m is None for m in momentum_buffers]
        if not any(missing):
            parts = [(params, grads, momentum_buffers, False)]
        else:
            for i, is_missing in enumerate(missing):
                if is_missing:
                    momentum_buffers[i] = torch.empty_like(grads[i])
            if all(missing):
                parts = [(params, grads, momentum_buffers, True)]
            else:
                parts = [
                    (
                        [p for p, x in zip(params, missing) if x == first],
                        [g for g, x in zip(grads, missing) if x == first],
                        [m for m, x in zip(momentum_buffers, missing) if x == first],
                        first,
                    )
                    for first in (True, False)
                ]
    for sub_p, sub_g, sub_m, is_first in parts:
        buckets = _group_by_device_and_dtype([sub_p, sub_g, sub_m])
        for (p_list, g_list, m_list), _ in buckets.values():
            torch._fused_sgd_(
                p_list,
                g_list,
                m_list if momentum != 0 else [],
                weight_decay=weight_decay,
                momentum=momentum,
                lr=lr,
                dampening=dampening,
                nesterov=nesterov,
                maximize=maximize,
                is_first_step=is_first,
            )
