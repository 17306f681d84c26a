r"""Adamax: Adam with the infinity norm in place of the second moment.

:class:`Adamax` is a drop-in replacement for :class:`torch.optim.Adamax`;
:func:`adamax` is its functional core.
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
    _foreach_addcdiv_scaled_,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _step_values,
    _view_as_real_lists,
)
from ._torch_phrases import check_betas, check_lr, check_nonnegative

__all__ = ["Adamax", "adamax"]


class Adamax(OptimizerBase):
    r"""Adamax: Adam with an exponentially weighted infinity norm instead of the RMS.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0, 1,
    \dots`), :math:`n = t + 1` the number of gradients seen after this step (the
    ``step`` counter), :math:`\eta` ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` ``eps`` and :math:`\lambda` ``weight_decay``, the step from
    :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) + \lambda\,\theta_t
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        m_{t+1} &= \beta_1 m_t + (1-\beta_1)\, g_t \\
        u_{t+1} &= \max\!\left(\beta_2\, u_t,\; |g_t| + \epsilon\right) \\
        \theta_{t+1} &= \theta_t - \frac{\eta}{1-\beta_1^n}\, \frac{m_{t+1}}{u_{t+1}}

    with :math:`m_0 = u_0 = 0` (the symbols of the book's chapter
    ``11_nadam_adamax``, which writes :math:`x` for :math:`\theta`).

    Conventions (those of ``torch.optim.Adamax``):

    * :math:`\epsilon` is added to :math:`|g_t|` **inside** the maximum
      (Kingma & Ba have no :math:`\epsilon`; it keeps :math:`u_t > 0`).
    * Only :math:`m` is bias-corrected; :math:`u` needs no correction.
    * Complex parameters are treated as pairs of real ones: :math:`|g_t|`
      is taken per real and imaginary part, not as the complex modulus.

    State per parameter: ``step``, ``exp_avg`` (:math:`m_t`) and ``exp_inf``
    (:math:`u_t`), as in ``torch.optim.Adamax``.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 2e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)` (default: (0.9, 0.999)).
        eps: :math:`\epsilon \ge 0` (default: 1e-8).
        weight_decay: L2 penalty :math:`\lambda \ge 0` (default: 0).
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
        capturable: not supported (must be False).

    Reference:
        Kingma & Ba (2015), *Adam: A Method for Stochastic Optimization*,
        ICLR, Section 7.1.
    """

    _differentiable_supported = True
    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        betas = check_betas(betas)
        check_nonnegative("eps", eps, "epsilon")
        check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags(
            "Adamax", foreach=foreach, differentiable=differentiable, capturable=capturable,
            differentiable_supported=True,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        if fused:  # a group key torch.optim.Adamax does not have: only when used
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": _new_step(),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_inf": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        beta1, beta2 = group["betas"]
        adamax(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_inf"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group.get("fused"),
            has_complex=has_complex,
        )


def adamax(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 2e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional Adamax: update ``params``, ``exp_avgs`` (:math:`m`),
    ``exp_infs`` (:math:`u`) and ``state_steps`` in place. See :class:`Adamax`."""
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_adamax, "foreach": _multi_tensor_adamax, "fused": _fused_adamax}[impl]
    func(
        params,
        grads,
        exp_avgs,
        exp_infs,
        state_steps,
        lr=lr,
        beta1=_as_float(beta1),
        beta2=_as_float(beta2),
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
        has_complex=has_complex,
    )


def _single_tensor_adamax(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    for i, (theta, g, m, u) in enumerate(zip(params, grads, exp_avgs, exp_infs)):
        g = g if not maximize else -g
        # (a list item: Dynamo loses `+=` on a local 0-dim float64 input under
        # torch.compile(dynamic=True), which fused=True compiles with)
        state_steps[i] += 1
        step_t = state_steps[i]
        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_{t-1}

        theta, g, m, u = _real(theta), _real(g), _real(m), _real(u)
        m.lerp_(g, 1 - beta1)  # m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        differentiable = torch.is_grad_enabled()  # the step runs under no_grad unless differentiable=True
        if differentiable:  # as torch.optim: no out= under autograd, amax of the two candidates
            candidates = torch.stack([u.mul_(beta2), g.abs().add_(eps)])
            u.copy_(torch.amax(candidates, 0))
        else:
            torch.maximum(u.mul_(beta2), g.abs().add_(eps), out=u)  # u_t = max(beta2 * u_{t-1}, |g_t| + eps)

        step_size = lr / (1 - beta1 ** _as_float(step_t))  # eta / (1 - beta1^t)
        if differentiable:  # addcdiv's backward keeps m and u: the next step updates them in place
            m, u = m.clone(), u.clone()
        theta.addcdiv_(m, u, value=-step_size)  # theta_t = theta_{t-1} - step_size * m_t / u_t (step_size: a float, or a 0-dim Tensor with a Tensor lr)


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_adamax = _compiled_per_tensor(_single_tensor_adamax)


def _multi_tensor_adamax(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    lr = _as_float(lr)
    buckets = _group_by_device_and_dtype([params, grads, exp_avgs, exp_infs, state_steps])
    for (p_list, g_list, m_list, u_list, steps), _ in buckets.values():
        if has_complex:
            _view_as_real_lists(p_list, g_list, m_list, u_list)
        _increment_steps(steps)
        g_list = _foreach_l2_grads(p_list, g_list, maximize=maximize, weight_decay=weight_decay)

        torch._foreach_lerp_(m_list, g_list, 1 - beta1)
        torch._foreach_mul_(u_list, beta2)
        if not maximize and weight_decay == 0:
            abs_g = torch._foreach_abs(g_list)  # g_list are the caller's gradients
        else:
            torch._foreach_abs_(g_list)
            abs_g = g_list  # type: ignore[assignment]  # (stubs: _foreach_abs returns a tuple)
        torch._foreach_add_(abs_g, eps)
        torch._foreach_maximum_(u_list, abs_g)

        step_sizes = [(lr / (1 - beta1**t)) * -1 for t in _step_values(steps)]
        _foreach_addcdiv_scaled_(p_list, m_list, u_list, step_sizes)
