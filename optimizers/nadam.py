r"""NAdam: Adam with Nesterov momentum and Dozat's momentum schedule.

:class:`NAdam` is a drop-in replacement for :class:`torch.optim.NAdam`;
:func:`nadam` is its functional core.
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
    _compiled_per_tensor,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _scalar_dtype,
    _step_values,
    _view_as_real_lists,
)
from ._torch_phrases import check_betas, check_lr, check_nonnegative

__all__ = ["NAdam", "nadam"]


class NAdam(OptimizerBase):
    r"""NAdam: Adam whose momentum term looks one step ahead (Nesterov), with a warming-up momentum.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0, 1,
    \dots`), :math:`n = t + 1` the number of gradients seen after this step (the
    ``step`` counter), :math:`\eta` ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` ``eps``, :math:`\lambda` ``weight_decay`` and :math:`\psi`
    ``momentum_decay``, the step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) \;[+\, \lambda\theta_t]
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        \mu_n &= \beta_1 \left(1 - \tfrac12\, 0.96^{\,n\psi}\right), \qquad
        \Pi_n = \prod_{i=1}^{n} \mu_i \\
        m_{t+1} &= \beta_1 m_t + (1-\beta_1)\, g_t \\
        v_{t+1} &= \beta_2 v_t + (1-\beta_2)\, g_t^2 \\
        d_{t+1} &= \sqrt{v_{t+1} / (1-\beta_2^n)} + \epsilon \\
        \theta_{t+1} &= \theta_t\;[\,\cdot\,(1-\eta\lambda)]
            - \eta\,\frac{1-\mu_n}{1-\Pi_n}\,\frac{g_t}{d_{t+1}}
            - \eta\,\frac{\mu_{n+1}}{1-\Pi_n\,\mu_{n+1}}\,\frac{m_{t+1}}{d_{t+1}}

    with :math:`m_0 = v_0 = 0` and :math:`\Pi_0 = 1` (the symbols of the book's
    chapter ``11_nadam_adamax``, which writes :math:`x` for :math:`\theta`). The
    bracketed weight-decay terms are
    alternatives: coupled (L2, added to the gradient) when
    ``decoupled_weight_decay=False``, decoupled (AdamW-style shrinking of the
    parameters) when True.

    Conventions (those of ``torch.optim.NAdam`` and Keras's ``Nadam``):

    * **Momentum schedule.** :math:`\mu_n` rises from about
      :math:`\beta_1/2` towards :math:`\beta_1` (Dozat's schedule with base
      0.96 and :math:`\psi = 0.004`); :math:`\Pi_n`, the product of all
      :math:`\mu_i` so far, is kept in the state as ``mu_product`` (a 0-dim
      float tensor: float32 unless the default dtype is float64).
    * The moving average :math:`m` uses the constant :math:`\beta_1`; the
      schedule enters only through the two step sizes. Dozat's paper
      (Algorithm 2) averages with :math:`\mu_n` instead,
      :math:`m_{t+1} = \mu_n m_t + (1-\mu_n) g_t`, for which the
      :math:`\Pi` corrections are exact; with the constant :math:`\beta_1` they
      are not, and the first few dozen steps under a constant gradient are
      shorter than the steady step (chapter ``11_nadam_adamax`` measures it).
    * :math:`\epsilon` is added outside the square root, after the bias
      correction of :math:`v`.
    * Complex parameters are treated as pairs of real ones.

    State per parameter: ``step``, ``mu_product`` (:math:`\Pi_t`),
    ``exp_avg`` (:math:`m_t`) and ``exp_avg_sq`` (:math:`v_t`), as in
    ``torch.optim.NAdam``.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 2e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)` (default: (0.9, 0.999)).
        eps: :math:`\epsilon \ge 0` (default: 1e-8).
        weight_decay: :math:`\lambda \ge 0` (default: 0).
        momentum_decay: :math:`\psi \ge 0` (default: 4e-3).
        decoupled_weight_decay: decay the parameters directly, as AdamW does
            (NAdamW) (default: False).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU, where it is
            faster for large models (see ``benchmarks/results/step_times.md``).
        maximize: maximize the objective instead of minimizing (default: False).
        capturable: not supported (must be False).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    References:
        Dozat (2016), *Incorporating Nesterov Momentum into Adam*, ICLR workshop.
        Loshchilov & Hutter (2019), *Decoupled Weight Decay Regularization*, ICLR.
    """

    _differentiable_supported = True
    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "decoupled_weight_decay": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        betas = check_betas(betas)
        check_nonnegative("eps", eps, "epsilon")
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("momentum_decay", momentum_decay)
        _check_impl_flags(
            "NAdam", foreach=foreach, differentiable=differentiable, capturable=capturable,
            differentiable_supported=True,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
        )
        if fused:  # a group key torch.optim.NAdam does not have: only when used
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # load_state_dict casts every state tensor but ``step`` to the
        # parameter's dtype; keep Pi_t in the scalar dtype it was computed in
        # (a lossless round trip), so that a resumed run is bit-identical to
        # an uninterrupted one. Old state dicts may hold a Python float.
        for p_state in self.state.values():
            if "mu_product" in p_state:
                pi = p_state["mu_product"]
                if not torch.is_tensor(pi):
                    p_state["mu_product"] = torch.tensor(float(pi), dtype=_scalar_dtype())
                elif pi.dtype != _scalar_dtype() or not pi.is_cpu:
                    p_state["mu_product"] = pi.to(device="cpu", dtype=_scalar_dtype())

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": _new_step(),
            "mu_product": torch.tensor(1.0, dtype=_scalar_dtype()),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        beta1, beta2 = group["betas"]
        nadam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["mu_product"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum_decay=group["momentum_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group.get("fused"),
            has_complex=has_complex,
        )


def nadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    mu_products: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 2e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional NAdam: update ``params`` and the state lists in place.

    ``exp_avgs`` (:math:`m`), ``exp_avg_sqs`` (:math:`v`), ``mu_products``
    (:math:`\Pi`, 0-dim tensors) and ``state_steps`` (0-dim tensors). See
    :class:`NAdam`.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if not all(torch.is_tensor(m) for m in mu_products):
        raise TypeError("mu_products must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_nadam, "foreach": _multi_tensor_nadam, "fused": _fused_nadam}[impl]
    func(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        mu_products,
        state_steps,
        lr=lr,
        beta1=_as_float(beta1),
        beta2=_as_float(beta2),
        eps=eps,
        weight_decay=weight_decay,
        momentum_decay=momentum_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        has_complex=has_complex,
    )


def _mu(beta1: float, t: float, momentum_decay: float) -> float:
    """Dozat's momentum schedule: mu_t = beta1 * (1 - 0.5 * 0.96^(t * psi))."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))


def _single_tensor_nadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    mu_products: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
) -> None:
    # A tensor lr stays a tensor: the scalar arithmetic below then rounds as in
    # torch.optim (in the tensor's dtype).
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        theta, g, m, v = _real(theta), _real(g), _real(exp_avgs[i]), _real(exp_avg_sqs[i])
        mu_product = mu_products[i]
        state_steps[i] += 1
        t = _as_float(state_steps[i])  # a Python float; the 0-dim tensor while compiling

        if weight_decay != 0:
            if decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)  # theta <- theta * (1 - eta * lambda)
            else:
                g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_{t-1}

        mu = _mu(beta1, t, momentum_decay)  # mu_t
        mu_next = _mu(beta1, t + 1, momentum_decay)  # mu_{t+1}
        mu_product *= mu  # Pi_t = Pi_{t-1} * mu_t

        m.lerp_(g, 1 - beta1)  # m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        denom = v.div(1 - beta2**t).sqrt()
        # d_t = sqrt(v_t / (1 - beta2^t)) + eps; with differentiable=True (autograd
        # records the step) out of place, and m cloned for addcdiv's backward
        differentiable = torch.is_grad_enabled()
        denom = denom + eps if differentiable else denom.add_(eps)

        pi = _as_float(mu_product)
        theta.addcdiv_(g, denom, value=-lr * (1.0 - mu) / (1.0 - pi))  # type: ignore[arg-type]  # a 0-dim Tensor lr works
        theta.addcdiv_(m.clone() if differentiable else m, denom, value=(-lr * mu_next) / (1.0 - pi * mu_next))  # type: ignore[arg-type]  # a 0-dim Tensor lr works


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_nadam = _compiled_per_tensor(_single_tensor_nadam)


def _multi_tensor_nadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    mu_products: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, mu_products, state_steps]
    )
    for (p_list, g_list, m_list, v_list, pi_list, steps), _ in buckets.values():
        if has_complex:
            _view_as_real_lists(p_list, g_list, m_list, v_list)
        _increment_steps(steps)
        if weight_decay != 0 and decoupled_weight_decay:
            torch._foreach_mul_(p_list, _as_float(1 - lr * weight_decay))
        g_list = _foreach_l2_grads(
            p_list, g_list, maximize=maximize,
            weight_decay=0.0 if decoupled_weight_decay else weight_decay,
        )

        _foreach_adam_moments(m_list, v_list, g_list, beta1, beta2)
        denom = torch._foreach_sqrt(v_list)

        ts = _step_values(steps)
        bias_correction2_sqrts = [(1 - beta2**t) ** 0.5 for t in ts]
        mus = [_mu(beta1, t, momentum_decay) for t in ts]
        mu_nexts = [_mu(beta1, t + 1, momentum_decay) for t in ts]
        torch._foreach_mul_(pi_list, mus)
        torch._foreach_div_(denom, bias_correction2_sqrts)
        torch._foreach_add_(denom, eps)

        lr_f = _as_float(lr)
        pis = _step_values(pi_list)
        step_size_grads = [(lr_f * (1.0 - mu) / (1.0 - pi)) * -1 for pi, mu in zip(pis, mus)]
        step_size_m = [(lr_f * mu_next / (1.0 - pi * mu_next)) * -1 for pi, mu_next in zip(pis, mu_nexts)]
        _foreach_addcdiv_scaled_(p_list, g_list, denom, step_size_grads)
        _foreach_addcdiv_scaled_(p_list, m_list, denom, step_size_m)
