r"""RAdam: Adam with a rectified adaptive learning rate.

:class:`RAdam` is a drop-in replacement for :class:`torch.optim.RAdam`;
:func:`radam` is its functional core.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    _foreach_flag,
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _compiled_per_tensor,
    _compiling,
    _foreach_adam_moments,
    _foreach_l2_grads,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _step_values,
    _view_as_real_lists,
)
from ._torch_phrases import check_betas, check_lr, check_nonnegative

__all__ = ["RAdam", "radam"]


class RAdam(OptimizerBase):
    r"""RAdam: Adam whose adaptive step is switched on only once its variance is finite.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0,
    1, \dots`), :math:`\eta` the learning rate ``lr``, :math:`\beta_1,
    \beta_2` = ``betas``, :math:`\epsilon` ``eps``, :math:`\lambda`
    ``weight_decay`` and :math:`n = t + 1` the number of gradients seen after
    this step (the ``step`` counter), the step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) \;[+\, \lambda\theta_t]
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        m_{t+1} &= \beta_1 m_t + (1-\beta_1)\, g_t, \qquad
        v_{t+1} = \beta_2 v_t + (1-\beta_2)\, g_t^2 \\
        \hat m_{t+1} &= \frac{m_{t+1}}{1-\beta_1^{n}} \\
        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
        \rho_{t+1} = \rho_\infty - \frac{2 n\, \beta_2^{n}}{1-\beta_2^{n}} \\
        r_{t+1} &= \sqrt{\frac{(\rho_{t+1}-4)(\rho_{t+1}-2)\,\rho_\infty}
                          {(\rho_\infty-4)(\rho_\infty-2)\,\rho_{t+1}}} \\
        \theta_{t+1} &= \theta_t\;[\,\cdot\,(1-\eta\lambda)] -
        \begin{cases}
            \eta\, r_{t+1}\, \hat m_{t+1} \,\dfrac{\sqrt{1-\beta_2^{n}}}{\sqrt{v_{t+1}} + \epsilon}
                & \text{if } \rho_{t+1} > 5, \\[1ex]
            \eta\, \hat m_{t+1} & \text{otherwise (momentum SGD)},
        \end{cases}

    with :math:`m_0 = v_0 = 0`. :math:`\rho_{t+1}` approximates the degrees
    of freedom of the simple moving average that :math:`v_{t+1}` stands for;
    while it is small the variance of the adaptive rate
    :math:`1/\sqrt{\hat v_{t+1}}` is large or infinite, and RAdam takes plain
    bias-corrected momentum steps instead (the first five, for any
    :math:`\beta_2` from 0.9 to 0.999). Once :math:`\rho_{t+1} > 5` the
    rectifier :math:`r_{t+1} \in (0, 1)` scales the Adam step so that its
    variance matches the limit's; :math:`r \to 1` as :math:`n \to \infty`.

    The bracketed weight-decay terms are alternatives: coupled (L2, added to
    the gradient) when ``decoupled_weight_decay=False``, decoupled (the
    parameters shrink by :math:`1-\eta\lambda` first, as in AdamW) when True.

    Conventions (those of ``torch.optim.RAdam``):

    * :math:`\epsilon` is added to :math:`\sqrt{v_t}` *before* the bias
      correction :math:`\sqrt{1-\beta_2^n}` multiplies the quotient (Adam adds
      it after); the paper's Algorithm 2 has no :math:`\epsilon`.
    * The switch is :math:`\rho_{t+1} > 5` (the paper's Algorithm 2 tests
      :math:`\rho_t > 4`, the authors' code :math:`\rho_t \ge 5`).
    * Complex parameters are treated as pairs of real ones.

    State per parameter: ``step`` (a 0-dim tensor holding :math:`n`),
    ``exp_avg`` (:math:`m_t`) and ``exp_avg_sq`` (:math:`v_t`), as in
    ``torch.optim.RAdam``, whose state dicts load into this class and vice versa.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)` (default: (0.9, 0.999)).
        eps: :math:`\epsilon \ge 0` (default: 1e-8).
        weight_decay: :math:`\lambda \ge 0` (default: 0).
        decoupled_weight_decay: decay the parameters directly, as AdamW does
            (default: False).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU.
        maximize: maximize the objective instead of minimizing (default: False).
        capturable: not supported (must be False).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    References:
        Liu, Jiang, He, Chen, Liu, Gao & Han (2020), *On the Variance of the
        Adaptive Learning Rate and Beyond*, ICLR.
        Loshchilov & Hutter (2019), *Decoupled Weight Decay Regularization*, ICLR.
    """

    _differentiable_supported = True
    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "decoupled_weight_decay": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative("eps", eps, "epsilon")
        betas = check_betas(betas)
        check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags(
            "RAdam", foreach=foreach, differentiable=differentiable, capturable=capturable,
            differentiable_supported=True,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            decoupled_weight_decay=decoupled_weight_decay,
            differentiable=differentiable,
        )
        if fused:  # a group key torch.optim.RAdam does not have: only when used
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": _new_step(),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        beta1, beta2 = group["betas"]
        radam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group.get("fused"),
            has_complex=has_complex,
        )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional RAdam: update ``params`` and the state lists in place.

    ``exp_avgs`` (:math:`m`), ``exp_avg_sqs`` (:math:`v`) and ``state_steps``
    (0-dim tensors holding the number of gradients seen, incremented here).
    See :class:`RAdam`.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_radam, "foreach": _multi_tensor_radam, "fused": _fused_radam}[impl]
    func(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=_as_float(beta1),
        beta2=_as_float(beta2),
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        has_complex=has_complex,
    )


def _rho(beta2: float, n: float) -> tuple[float, float]:
    """``(rho_inf, rho)``: the SMA lengths of the limit and after ``n`` gradients."""
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf, rho_inf - 2 * n * (beta2**n) / (1 - beta2**n)


def _rectifier(rho_inf: float, rho: float) -> float:
    """r, the ratio of the adaptive rate's standard deviations (for rho > 4)."""
    return ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5


def _single_tensor_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
) -> None:
    # A tensor lr stays a tensor: the products below then round as in torch.optim.
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        state_steps[i] += 1
        n = _as_float(state_steps[i])  # gradients seen, t + 1 (the 0-dim tensor while compiling)

        if weight_decay != 0:
            if decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)  # theta <- theta * (1 - eta * lambda)
            else:
                g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_t

        # complex numbers: real and imaginary parts are separate coordinates
        theta, g, m, v = _real(theta), _real(g), _real(exp_avgs[i]), _real(exp_avg_sqs[i])

        m.lerp_(g, 1 - beta1)  # m_{t+1} = beta1 * m_t + (1 - beta1) * g_t
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_{t+1} = beta2 * v_t + (1 - beta2) * g_t^2
        m_hat = m / (1 - beta1**n)
        bias_correction2 = 1 - beta2**n

        rho_inf, rho = _rho(beta2, n)  # rho_{t+1}
        if _compiling():
            # no branch on a traced value: both cases, then torch.where (as torch.optim's
            # capturable path; rho <= 4 makes the discarded rectifier NaN, never used)
            denom = v.sqrt() + eps
            rect = torch.where(cast(Tensor, rho) > 5.0, _rectifier(rho_inf, rho) * (bias_correction2**0.5 / denom), 1.0)
            theta.add_(m_hat * lr * rect, alpha=-1.0)
        elif rho > 5.0:
            denom = v.sqrt()  # out of place below under autograd (differentiable=True)
            denom = denom + eps if torch.is_grad_enabled() else denom.add_(eps)
            adaptive = bias_correction2**0.5 / denom  # sqrt(1 - beta2^n) / (sqrt(v_{t+1}) + eps)
            theta.add_(m_hat * lr * adaptive * _rectifier(rho_inf, rho), alpha=-1.0)
        else:
            theta.add_(m_hat * lr, alpha=-1.0)  # un-rectified: a momentum SGD step


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_radam = _compiled_per_tensor(_single_tensor_radam)


def _multi_tensor_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    lr = _as_float(lr)
    buckets = _group_by_device_and_dtype([params, grads, exp_avgs, exp_avg_sqs, state_steps])
    for (p_list, g_list, m_list, v_list, steps), _ in buckets.values():
        if has_complex:
            _view_as_real_lists(p_list, g_list, m_list, v_list)
        _increment_steps(steps)
        if weight_decay != 0 and decoupled_weight_decay:
            torch._foreach_mul_(p_list, 1 - lr * weight_decay)
        g_list = _foreach_l2_grads(
            p_list, g_list, maximize=maximize,
            weight_decay=0.0 if decoupled_weight_decay else weight_decay,
        )

        _foreach_adam_moments(m_list, v_list, g_list, beta1, beta2)
        del g_list

        # One multiplier per tensor, theta <- theta + m * c, with
        #   c = -eta r sqrt(1 - beta2^n) / ((1 - beta1^n)(sqrt(v) + eps))  if rho > 5,
        #   c = -eta / (1 - beta1^n)                                        otherwise,
        # computed with torch.optim's sequence of operations (the rectified
        # factor goes through a reciprocal; the other term is then 0).
        ns = _step_values(steps)
        rects: list[Any] = []
        for n in ns:
            rho_inf, rho = _rho(beta2, n)
            if _compiling():  # no branch on a traced counter (see the single-tensor path)
                rects.append(torch.where(cast(Tensor, rho) > 5, _rectifier(rho_inf, rho), 0.0))
            else:
                rects.append(_rectifier(rho_inf, rho) if rho > 5 else 0)
        bias_corrections1 = [1 - beta1**n for n in ns]
        if _compiling():
            plain_step_sizes: list[Any] = [
                torch.where(r > 0, 0.0, lr / bc) * -1 for r, bc in zip(rects, bias_corrections1)]
        else:
            plain_step_sizes = [(lr * (0 if r > 0 else 1.0) / bc) * -1 for r, bc in zip(rects, bias_corrections1)]
        rect_step_sizes = [
            ((1 - beta2**n) ** 0.5) * (lr * r / bc) * -1 for n, r, bc in zip(ns, rects, bias_corrections1)
        ]
        buffer = torch._foreach_sqrt(v_list)
        torch._foreach_add_(buffer, eps)
        torch._foreach_div_(buffer, rect_step_sizes)
        torch._foreach_reciprocal_(buffer)
        torch._foreach_add_(buffer, plain_step_sizes)
        torch._foreach_addcmul_(p_list, m_list, buffer)
