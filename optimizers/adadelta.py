r"""Adadelta: step sizes from the ratio of two running RMS values.

:class:`Adadelta` is a drop-in replacement for :class:`torch.optim.Adadelta`;
:func:`adadelta` is its functional core.
"""

from __future__ import annotations

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
    _compiled_per_tensor,
    _check_range,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _view_as_real_lists,
    _foreach_add_scaled_,
)
from ._torch_phrases import check_lr, check_nonnegative, torch_phrase

__all__ = ["Adadelta", "adadelta"]


class Adadelta(OptimizerBase):
    r"""Adadelta: scale each gradient by RMS(past updates) / RMS(past gradients).

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0, 1,
    \dots`), :math:`\eta` ``lr``, :math:`\rho` ``rho``, :math:`\epsilon` ``eps``
    and :math:`\lambda` ``weight_decay``, the step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) + \lambda\,\theta_t
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        v_{t+1} &= \rho\, v_t + (1-\rho)\, g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_t + \epsilon}}{\sqrt{v_{t+1} + \epsilon}}\; g_t \\
        u_{t+1} &= \rho\, u_t + (1-\rho)\, \Delta_t^2 \\
        \theta_{t+1} &= \theta_t - \eta\, \Delta_t

    with :math:`v_0 = u_0 = 0`: the numerator uses :math:`u_t`, the average of
    the updates made before this step.

    Conventions (those of ``torch.optim.Adadelta``):

    * :math:`\epsilon` is added **inside** both square roots, as in Zeiler's
      paper (it also seeds the very first steps, when :math:`u = 0`:
      :math:`|\Delta_0| \approx \sqrt{\epsilon/(1-\rho)}`).
    * The learning rate :math:`\eta` multiplies the update. Zeiler's method
      has no learning rate; the default :math:`\eta = 1` recovers it.
    * Complex parameters are treated as pairs of real ones.

    State per parameter: ``step``, ``square_avg`` (:math:`v_t`) and
    ``acc_delta`` (:math:`u_t`), as in ``torch.optim.Adadelta``.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: :math:`\eta \ge 0`, multiplier of the update, float or 1-element
            tensor (default: 1.0).
        rho: decay :math:`\rho \in [0, 1]` of both running averages (default: 0.9).
        eps: :math:`\epsilon \ge 0` (default: 1e-6).
        weight_decay: L2 penalty :math:`\lambda \ge 0` (default: 0).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU, where it is
            faster for large models (see ``benchmarks/results/step_times.md``).
        capturable: not supported (must be False).
        maximize: maximize the objective instead of minimizing (default: False).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    Reference:
        Zeiler (2012), *ADADELTA: An Adaptive Learning Rate Method*,
        arXiv:1212.5701.
    """

    _differentiable_supported = True
    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        with torch_phrase(f"Invalid rho value: {rho}"):
            _check_range("rho", rho, 0.0, 1.0)
        check_nonnegative("eps", eps, "epsilon")
        check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags(
            "Adadelta", foreach=foreach, differentiable=differentiable, capturable=capturable,
            differentiable_supported=True,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            capturable=capturable,
            foreach=foreach,
            differentiable=differentiable,
        )
        if fused:  # a group key torch.optim.Adadelta does not have: only when used
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": _new_step(),
            "square_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "acc_delta": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        adadelta(
            params,
            grads,
            [s["square_avg"] for s in states],
            [s["acc_delta"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            rho=group["rho"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group.get("fused"),
            has_complex=has_complex,
        )


def adadelta(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional Adadelta: update ``params``, ``square_avgs`` (:math:`v`),
    ``acc_deltas`` (:math:`u`) and ``state_steps`` in place. See :class:`Adadelta`."""
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_adadelta, "foreach": _multi_tensor_adadelta, "fused": _fused_adadelta}[impl]
    func(
        params,
        grads,
        square_avgs,
        acc_deltas,
        state_steps,
        lr=_as_float(lr),
        rho=rho,
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
        has_complex=has_complex,
    )


def _single_tensor_adadelta(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    for i, (theta, g, v, u) in enumerate(zip(params, grads, square_avgs, acc_deltas)):
        # (a list item: Dynamo loses `+=` on a local 0-dim float64 input under
        # torch.compile(dynamic=True), which fused=True compiles with)
        state_steps[i] += 1
        g = g if not maximize else -g
        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_{t-1}

        theta, g, v, u = _real(theta), _real(g), _real(v), _real(u)
        v.mul_(rho).addcmul_(g, g, value=1 - rho)  # v_t = rho * v_{t-1} + (1 - rho) * g_t^2
        std = v.add(eps).sqrt_()  # sqrt(v_t + eps)
        delta = u.add(eps).sqrt_()  # sqrt(u_{t-1} + eps)
        if torch.is_grad_enabled():  # differentiable=True: sqrt's backward reads delta
            delta = delta.clone()
        delta.div_(std).mul_(g)  # Delta_t = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t
        u.mul_(rho).addcmul_(delta, delta, value=1 - rho)  # u_t = rho * u_{t-1} + (1 - rho) * Delta_t^2
        theta.add_(delta, alpha=-lr)  # theta_t = theta_{t-1} - eta * Delta_t


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_adadelta = _compiled_per_tensor(_single_tensor_adadelta)


def _multi_tensor_adadelta(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype([params, grads, square_avgs, acc_deltas, state_steps])
    for (p_list, g_list, v_list, u_list, steps), _ in buckets.values():
        if has_complex:
            _view_as_real_lists(p_list, g_list, v_list, u_list)
        _increment_steps(steps)
        g_list = _foreach_l2_grads(p_list, g_list, maximize=maximize, weight_decay=weight_decay)

        torch._foreach_mul_(v_list, rho)
        torch._foreach_addcmul_(v_list, g_list, g_list, value=1 - rho)
        std = torch._foreach_add(v_list, eps)
        torch._foreach_sqrt_(std)
        deltas = torch._foreach_add(u_list, eps)
        torch._foreach_sqrt_(deltas)
        torch._foreach_div_(deltas, std)
        torch._foreach_mul_(deltas, g_list)
        torch._foreach_mul_(u_list, rho)
        torch._foreach_addcmul_(u_list, deltas, deltas, value=1 - rho)
        _foreach_add_scaled_(p_list, deltas, -lr)
