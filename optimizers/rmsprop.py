r"""RMSprop, plain or centered, with optional momentum.

:class:`RMSprop` is a drop-in replacement for :class:`torch.optim.RMSprop`;
:func:`rmsprop` is its functional core.
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
    _foreach_addcdiv_scaled_,
)
from ._torch_phrases import check_lr, check_nonnegative, torch_phrase

__all__ = ["RMSprop", "rmsprop"]


class RMSprop(OptimizerBase):
    r"""RMSprop: divide the gradient by a running root mean square of recent gradients.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0, 1,
    \dots`), :math:`\eta` ``lr``, :math:`\alpha` ``alpha`` (the smoothing
    constant), :math:`\epsilon` ``eps``, :math:`\lambda` ``weight_decay`` and
    :math:`\beta` ``momentum``, the step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) + \lambda\,\theta_t
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        v_{t+1} &= \alpha\, v_t + (1-\alpha)\, g_t^2 \\
        \bar g_{t+1} &= \alpha\, \bar g_t + (1-\alpha)\, g_t
              \qquad (\text{centered only}) \\
        \tilde v_{t+1} &= v_{t+1} - \bar g_{t+1}^2 \;\text{ if centered, else }\; v_{t+1} \\
        b_{t+1} &= \beta\, b_t + \frac{g_t}{\sqrt{\tilde v_{t+1}} + \epsilon}, \qquad
        \theta_{t+1} = \theta_t - \eta\, b_{t+1} \qquad (\beta > 0) \\
        \theta_{t+1} &= \theta_t - \eta\, \frac{g_t}{\sqrt{\tilde v_{t+1}} + \epsilon}
              \qquad (\beta = 0)

    with :math:`v_0 = \bar g_0 = b_0 = 0`. The index of the state counts the
    gradients it has absorbed: after this step the ``step`` counter is
    :math:`t + 1`.

    Conventions (those of ``torch.optim.RMSprop``):

    * :math:`\epsilon` is added **outside** the square root (Keras adds it
      inside, :math:`\sqrt{v + \epsilon}`, with a default of 1e-7).
    * No bias correction: :math:`v` starts at 0, so early steps are large
      (the first is about :math:`\eta/\sqrt{1-\alpha}` times the gradient's sign).
    * The centered variant (Graves, 2013) divides by an estimate of the
      gradient's standard deviation instead of its root mean square (Graves
      puts his :math:`\epsilon` inside the root; torch, and this class, outside).
    * Momentum is applied to the already normalized step, with the learning
      rate outside the buffer.
    * Complex parameters are treated as pairs of real ones.

    State per parameter: ``step``, ``square_avg`` (:math:`v_t`),
    ``momentum_buffer`` (:math:`b_t`, if :math:`\beta > 0`) and ``grad_avg``
    (:math:`\bar g_t`, if centered), as in ``torch.optim.RMSprop``.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-2).
        alpha: smoothing constant :math:`\alpha \in [0, 1]` (default: 0.99).
        eps: :math:`\epsilon \ge 0` (default: 1e-8).
        weight_decay: L2 penalty :math:`\lambda \ge 0` (default: 0).
        momentum: momentum coefficient :math:`\beta \ge 0` (default: 0).
        centered: use the centered variant (default: False).
        capturable: not supported (must be False).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU, where it is
            faster for large models (see ``benchmarks/results/step_times.md``).
        maximize: maximize the objective instead of minimizing (default: False).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    References:
        Tieleman & Hinton (2012), *Lecture 6.5 - RMSprop*, COURSERA: Neural
        Networks for Machine Learning.
        Graves (2013), *Generating Sequences With Recurrent Neural Networks*,
        arXiv:1308.0850 (centered variant).
    """

    _differentiable_supported = True
    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"momentum": 0, "centered": False, "capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        with torch_phrase(f"Invalid alpha value: {alpha}"):
            _check_range("alpha", alpha, 0.0, 1.0)
        check_nonnegative("eps", eps, "epsilon")
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("momentum", momentum)
        _check_impl_flags(
            "RMSprop", foreach=foreach, differentiable=differentiable, capturable=capturable,
            differentiable_supported=True,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
        )
        if fused:  # a group key torch.optim.RMSprop does not have: only when used
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {
            "step": _new_step(),
            "square_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        }
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        rmsprop(
            params,
            grads,
            [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if group["centered"] else [],
            [s["momentum_buffer"] for s in states] if group["momentum"] > 0 else [],
            [s["step"] for s in states],
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group.get("fused"),
            has_complex=has_complex,
        )


def rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional RMSprop: update ``params`` and the state lists in place.

    ``square_avgs`` (:math:`v`), ``grad_avgs`` (:math:`\bar g`, empty unless
    centered), ``momentum_buffers`` (:math:`b`, empty unless momentum > 0).
    See :class:`RMSprop`.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_rmsprop, "foreach": _multi_tensor_rmsprop, "fused": _fused_rmsprop}[impl]
    func(
        params,
        grads,
        square_avgs,
        grad_avgs,
        momentum_buffers,
        state_steps,
        lr=_as_float(lr),
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
        has_complex=has_complex,
    )


def _single_tensor_rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    has_complex: bool,
) -> None:
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        state_steps[i] += 1
        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_{t-1}

        theta, g, v = _real(theta), _real(g), _real(square_avgs[i])
        v.mul_(alpha).addcmul_(g, g, value=1 - alpha)  # v_t = alpha * v_{t-1} + (1 - alpha) * g_t^2

        if centered:
            g_bar = _real(grad_avgs[i])
            g_bar.lerp_(g, 1 - alpha)  # g_bar_t = alpha * g_bar_{t-1} + (1 - alpha) * g_t
            if torch.is_grad_enabled():  # differentiable=True: keep the saved g_bar intact
                g_bar = g_bar.clone()
            denom = v.addcmul(g_bar, g_bar, value=-1).sqrt_()  # sqrt(v_t - g_bar_t^2)
        else:
            denom = v.sqrt()
        # sqrt(v_tilde_t) + eps; out of place when autograd records the step
        # (differentiable=True), as sqrt's backward reads its output
        denom = denom + eps if torch.is_grad_enabled() else denom.add_(eps)

        if momentum > 0:
            b = _real(momentum_buffers[i])
            b.mul_(momentum).addcdiv_(g, denom)  # b = beta * b + g / denom
            theta.add_(b, alpha=-lr)  # theta_t = theta_{t-1} - eta * b_t
        else:
            theta.addcdiv_(g, denom, value=-lr)  # theta_t = theta_{t-1} - eta * g_t / denom


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_rmsprop = _compiled_per_tensor(_single_tensor_rmsprop)


def _multi_tensor_rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype(
        [params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps]
    )
    for (p_list, g_list, v_list, gbar_list, b_list, steps), _ in buckets.values():
        if has_complex:
            others = [g_list, v_list]
            if momentum > 0:
                others.append(b_list)
            if centered:
                others.append(gbar_list)
            _view_as_real_lists(p_list, *others)
        _increment_steps(steps)
        g_list = _foreach_l2_grads(p_list, g_list, maximize=maximize, weight_decay=weight_decay)

        torch._foreach_mul_(v_list, alpha)
        torch._foreach_addcmul_(v_list, g_list, g_list, value=1 - alpha)
        if centered:
            torch._foreach_lerp_(gbar_list, g_list, 1 - alpha)
            denom = torch._foreach_addcmul(v_list, gbar_list, gbar_list, value=-1)
            torch._foreach_sqrt_(denom)
        else:
            denom = torch._foreach_sqrt(v_list)
        torch._foreach_add_(denom, eps)

        if momentum > 0:
            torch._foreach_mul_(b_list, momentum)
            torch._foreach_addcdiv_(b_list, g_list, denom)
            _foreach_add_scaled_(p_list, b_list, -lr)
        else:
            _foreach_addcdiv_scaled_(p_list, g_list, denom, [-lr] * len(p_list))
