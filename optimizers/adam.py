r"""Adam, its AMSGrad variant, and AdamW (Adam with decoupled weight decay).

:class:`Adam` and :class:`AdamW` are drop-in replacements for
:class:`torch.optim.Adam` and :class:`torch.optim.AdamW`; :func:`adam` and
:func:`adamw` are their functional cores.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    _foreach_flag,
    _foreach_adam_moments,
    _foreach_addcdiv_scaled_,
    _foreach_l2_grads,
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _step_values,
    _view_as_real_lists,
)
from ._torch_phrases import check_betas, check_lr, check_nonnegative

__all__ = ["Adam", "AdamW", "adam", "adamw"]

_ADAM_EQUATIONS = r"""
    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0, 1,
    \dots`), :math:`\eta` the learning rate ``lr``, :math:`\beta_1, \beta_2` =
    ``betas``, :math:`\epsilon` ``eps`` and :math:`\lambda` ``weight_decay``, the
    step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) \;[+\, \lambda\theta_t]
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        m_{t+1} &= \beta_1 m_t + (1-\beta_1)\, g_t \\
        v_{t+1} &= \beta_2 v_t + (1-\beta_2)\, g_t^2 \\
        v^{\max}_{t+1} &= \max(v^{\max}_t, v_{t+1})
              \qquad (\text{amsgrad only}) \\
        \hat m_{t+1} &= \frac{m_{t+1}}{1-\beta_1^{t+1}}, \qquad
        \hat v_{t+1} = \frac{v^{\max}_{t+1} \text{ if amsgrad, else } v_{t+1}}{1-\beta_2^{t+1}} \\
        \theta_{t+1} &= \theta_t\;[\,\cdot\,(1-\eta\lambda)]
            - \eta\, \frac{\hat m_{t+1}}{\sqrt{\hat v_{t+1}} + \epsilon}

    with :math:`m_0 = v_0 = v^{\max}_0 = 0`. The bias corrections use the
    number of gradients seen, :math:`t + 1`, which is the ``step`` counter
    after this step.
"""

_ADAM_WEIGHT_DECAY = r"""
    The bracketed weight-decay terms are alternatives: the first
    (**coupled**, an L2 penalty added to the gradient, so that it passes
    through :math:`m` and :math:`v`) when ``decoupled_weight_decay=False``; the
    second (**decoupled**, the parameters shrink by the factor
    :math:`1-\eta\lambda` before the Adam step, as in AdamW) when
    ``decoupled_weight_decay=True``.
"""

_ADAM_CONVENTIONS = r"""
    Conventions (those of ``torch.optim``):

    * :math:`\epsilon` is added **outside** the square root and **after** the
      bias corrections, :math:`\hat m / (\sqrt{\hat v} + \epsilon)`, as in
      Algorithm 1 of Kingma & Ba (not the more efficient form at the end of
      their Section 2, which adds :math:`\hat\epsilon` to the uncorrected
      :math:`\sqrt{v}`).
    * **AMSGrad** takes the running maximum of the *biased* second moment
      :math:`v` and then bias-corrects the maximum with
      :math:`1-\beta_2^{t+1}` (Reddi et al.'s AMSGrad has neither a bias
      correction nor an :math:`\epsilon`).
    * :math:`m_{t+1}` is computed as ``m.lerp_(g, 1 - beta1)``, i.e.
      :math:`m_t + (1-\beta_1)(g_t - m_t)`: the same number up to rounding.
    * Complex parameters are treated as pairs of real ones (real and
      imaginary parts get separate second moments).
"""

_ADAM_ARGS = r"""
    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)` (default: (0.9, 0.999)).
        eps: :math:`\epsilon \ge 0` (default: 1e-8).
        weight_decay: :math:`\lambda \ge 0` (default: {wd}).
        amsgrad: use the AMSGrad variant (default: False).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU, where it is
            faster for large models (see ``benchmarks/results/step_times.md``).
        maximize: maximize the objective instead of minimizing (default: False).
        capturable: not supported (must be False).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: use torch's fused kernel (``torch._fused_adam_`` /
            ``torch._fused_adamw_``); floating-point params only (default: None).
"""


class Adam(OptimizerBase):
    _differentiable_supported = True
    __doc__ = (
        r"""Adam: adaptive moment estimation, with optional AMSGrad and decoupled weight decay.
"""
        + _ADAM_EQUATIONS
        + _ADAM_WEIGHT_DECAY
        + _ADAM_CONVENTIONS
        + r"""
    State per parameter: ``step`` (a 0-dim tensor, :math:`t`), ``exp_avg``
    (:math:`m_t`), ``exp_avg_sq`` (:math:`v_t`) and, with AMSGrad,
    ``max_exp_avg_sq`` (:math:`v^{\max}_t`): the same keys as ``torch.optim.Adam``,
    whose state dicts load into this class and vice versa.
"""
        + _ADAM_ARGS.replace("{wd}", "0")
        + r"""        decoupled_weight_decay: decay the parameters directly (AdamW)
            instead of adding :math:`\lambda\theta` to the gradient (default: False).

    References:
        Kingma & Ba (2015), *Adam: A Method for Stochastic Optimization*, ICLR.
        Reddi, Kale & Kumar (2018), *On the Convergence of Adam and Beyond*, ICLR.
        Loshchilov & Hutter (2019), *Decoupled Weight Decay Regularization*, ICLR.
"""
    )

    _fused_supported = True
    _group_fallbacks = {
        "amsgrad": False,
        "capturable": False,
        "fused": None,
        "decoupled_weight_decay": False,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        _check_tensor_hyperparameters(lr, betas, foreach=foreach)
        check_lr(lr)
        betas = check_betas(betas)
        check_nonnegative("eps", eps, "epsilon")
        check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags(
            type(self).__name__,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
            differentiable_supported=True,
            capturable=capturable,
            fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {
            "step": _new_step(p, fused=group["fused"]),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        beta1, beta2 = group["betas"]
        adam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
            [s["step"] for s in states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"],
            maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            foreach=_foreach_flag(group),
            fused=group["fused"],
            has_complex=has_complex,
        )


class AdamW(Adam):
    __doc__ = (
        r"""AdamW: Adam with decoupled weight decay (default :math:`\lambda = 10^{-2}`).

    Identical to ``Adam(..., decoupled_weight_decay=True)``:
"""
        + _ADAM_EQUATIONS.replace(r"\;[+\, \lambda\theta_t]", "").replace(
            r"\;[\,\cdot\,(1-\eta\lambda)]", r"\,(1-\eta\lambda)"
        )
        + _ADAM_CONVENTIONS
        + r"""
    Note that the decay is :math:`\eta\lambda`, proportional to the (scheduled)
    learning rate, as in ``torch.optim.AdamW``; Loshchilov & Hutter write it
    with a separate schedule multiplier :math:`\eta_t \lambda`.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` and, with
    AMSGrad, ``max_exp_avg_sq`` (as :class:`Adam`).
"""
        + _ADAM_ARGS.replace("{wd}", "1e-2")
        + r"""
    References:
        Loshchilov & Hutter (2019), *Decoupled Weight Decay Regularization*, ICLR.
        Kingma & Ba (2015), *Adam: A Method for Stochastic Optimization*, ICLR.
"""
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


def _check_tensor_hyperparameters(lr: Any, betas: Any, *, foreach: bool | None) -> None:
    """torch.optim.Adam's rules for tensor ``lr`` and ``betas``, with its phrases.

    A tensor ``lr`` or ``beta`` is refused with ``foreach=True`` (torch's
    multi-tensor Adam takes them only with ``capturable=True``, which this
    package does not implement); ``betas`` are both numbers or both tensors, and
    a tensor hyperparameter has one element.
    """
    if isinstance(lr, Tensor) and foreach:
        raise ValueError(
            "Invalid lr: a Tensor with foreach=True (must be a float with foreach=True, "
            "or leave foreach=None) [torch.optim: lr as a Tensor is not supported for "
            "capturable=False and foreach=True]"
        )
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        return  # check_betas explains
    kinds = [isinstance(b, Tensor) for b in betas]
    if kinds[0] != kinds[1]:
        raise ValueError(
            f"Invalid betas: {betas!r} (must be two numbers or two Tensors) "
            "[torch.optim: betas must be either both floats or both Tensors]"
        )
    for i, b in enumerate(betas):
        if not isinstance(b, Tensor):
            continue
        if foreach:
            raise ValueError(
                f"Invalid betas[{i}]: a Tensor with foreach=True (must be a float with "
                f"foreach=True, or leave foreach=None) [torch.optim: betas[{i}] as a Tensor "
                "is not supported for capturable=False and foreach=True]"
            )
        if b.numel() != 1:
            raise ValueError(
                f"Invalid betas[{i}]: a Tensor of shape {tuple(b.shape)} (must be "
                f"1-element) [torch.optim: Tensor betas[{i}] must be 1-element]"
            )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-3,
    beta1: float | Tensor = 0.9,
    beta2: float | Tensor = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional Adam: update ``params`` and the state lists in place.

    See :class:`Adam` for the equations. ``exp_avgs``, ``exp_avg_sqs`` and
    ``max_exp_avg_sqs`` (empty unless ``amsgrad``) are :math:`m`, :math:`v`
    and :math:`v^{\max}`; ``state_steps`` are 0-dim float tensors holding
    :math:`t-1`, incremented here.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_adam, "foreach": _multi_tensor_adam, "fused": _fused_adam}[impl]
    func(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=_as_float(beta1),
        beta2=_as_float(beta2),
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
        has_complex=has_complex,
    )


def adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-3,
    beta1: float | Tensor = 0.9,
    beta2: float | Tensor = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    """Functional AdamW: :func:`adam` with ``decoupled_weight_decay=True``."""
    adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
        foreach=foreach, fused=fused, has_complex=has_complex,
    )


def _single_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    has_complex: bool,
) -> None:
    # A tensor lr stays a tensor: the scalar arithmetic below then rounds as in
    # torch.optim (in the tensor's dtype).
    differentiable = torch.is_grad_enabled()  # the step runs under no_grad unless differentiable=True
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = _as_float(state_steps[i])  # a Python float; the 0-dim tensor while compiling

        if weight_decay != 0:
            if decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)  # theta <- theta * (1 - eta * lambda)
            else:
                g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_{t-1}

        # complex numbers: real and imaginary parts are separate coordinates
        theta, g, m, v = _real(theta), _real(g), _real(m), _real(v)

        m.lerp_(g, 1 - beta1)  # m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2

        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        if amsgrad:
            v_max = _real(max_exp_avg_sqs[i])
            if differentiable:  # maximum's backward reads its inputs: no out=
                v_max.copy_(torch.maximum(v_max.clone(), v.clone()))
            else:
                torch.maximum(v_max, v, out=v_max)  # v_max_t = max(v_max_{t-1}, v_t)
            v = v_max
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)  # sqrt(v_hat_t) + eps

        # with differentiable=True, addcdiv's backward keeps m: the next step's
        # in-place update of the state must not change the saved tensor
        theta.addcdiv_(m.clone() if differentiable else m, denom, value=-lr / bias_correction1)  # theta_t = theta - eta/(1-beta1^t) * m_t / denom (a Tensor lr works)


def _multi_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps]
    )
    for (p_list, g_list, m_list, v_list, vmax_list, steps), _ in buckets.values():
        if has_complex:
            if amsgrad:
                _view_as_real_lists(p_list, g_list, m_list, v_list, vmax_list)
            else:
                _view_as_real_lists(p_list, g_list, m_list, v_list)
        _increment_steps(steps)
        if weight_decay != 0 and decoupled_weight_decay:
            torch._foreach_mul_(p_list, _as_float(1 - lr * weight_decay))
        g_list = _foreach_l2_grads(
            p_list, g_list, maximize=maximize,
            weight_decay=0.0 if decoupled_weight_decay else weight_decay,
        )

        _foreach_adam_moments(m_list, v_list, g_list, beta1, beta2)
        del g_list

        ts = _step_values(steps)
        # scalars computed as in the single-tensor path (also for a tensor lr)
        step_sizes = [_as_float((lr / (1 - beta1**t)) * -1) for t in ts]
        bias_correction2_sqrts = [(1 - beta2**t) ** 0.5 for t in ts]
        if amsgrad:
            torch._foreach_maximum_(vmax_list, v_list)
            denom = torch._foreach_sqrt(vmax_list)
        else:
            denom = torch._foreach_sqrt(v_list)
        torch._foreach_div_(denom, bias_correction2_sqrts)
        torch._foreach_add_(denom, eps)
        _foreach_addcdiv_scaled_(p_list, m_list, denom, step_sizes)


def _fused_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    lr = _as_float(lr)
    if has_complex:
        raise RuntimeError(
            f"{'AdamW' if decoupled_weight_decay else 'Adam'} with fused=True requires "
            "floating-point params, but got complex ones"
        )
    kernel = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
    buckets = _group_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps]
    )
    for (p_list, g_list, m_list, v_list, vmax_list, steps), _ in buckets.values():
        torch._foreach_add_(steps, 1)
        kernel(
            p_list,
            g_list,
            m_list,
            v_list,
            vmax_list,
            steps,
            amsgrad=amsgrad,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
        )
