r"""Yogi: Adam with an additive, sign-controlled second moment (Zaheer et al., 2018).

:class:`Yogi` takes the arguments and reproduces the trajectory of
``torch_optimizer.Yogi`` (torch-optimizer 0.3.0); :func:`yogi` is its
functional core.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _compiled_per_tensor,
    _foreach_addcdiv_scaled_,
    _foreach_l2_grads,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _sqrt,
    _step_values,
    _view_as_real_lists,
)
from ._torch_phrases import check_betas, check_lr, check_nonnegative

__all__ = ["Yogi", "yogi"]


class Yogi(OptimizerBase):
    r"""Yogi: Adam whose second moment moves by an additive step of fixed sign.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0, 1,
    \dots`), :math:`\eta` the learning rate ``lr``, :math:`\beta_1, \beta_2` =
    ``betas``, :math:`\epsilon` ``eps``, :math:`v_{\text{init}}`
    ``initial_accumulator`` and :math:`\lambda` ``weight_decay``, the step from
    :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) + \lambda\theta_t
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        m_{t+1} &= \beta_1 m_t + (1-\beta_1)\, g_t \\
        v_{t+1} &= v_t - (1-\beta_2)\,\operatorname{sign}(v_t - g_t^2)\, g_t^2 \\
        \theta_{t+1} &= \theta_t - \frac{\eta}{1-\beta_1^{t+1}}\,
            \frac{m_{t+1}}{\sqrt{v_{t+1} / (1-\beta_2^{t+1})} + \epsilon}

    with :math:`m_0 = v_0 = v_{\text{init}}` (elementwise). Adam's second
    moment is :math:`v_{t+1} = v_t - (1-\beta_2)(v_t - g_t^2)`: its change is
    proportional to the gap :math:`v_t - g_t^2`, so one large gradient inflates
    :math:`v` (and shrinks the step) at once, and a run of small gradients
    deflates it geometrically. Yogi keeps the direction of that change and
    makes its size :math:`(1-\beta_2)\, g_t^2`, independent of :math:`v_t`:
    :math:`v` can grow or shrink only by that much per step, so the effective
    rate :math:`\eta / (\sqrt{\hat v} + \epsilon)` changes more slowly. The
    sign of a zero gap is zero (:math:`v` stays). :math:`v` stays
    non-negative: when it decreases, it does so by less than the gap.

    Conventions (those of ``torch_optimizer.Yogi``, which this class matches to
    float64 round-off; they differ from the paper in three places):

    * **Initial moments.** Algorithm 2 of Zaheer et al. starts from
      :math:`m_0 = v_0 = 0`, and their text proposes to start :math:`v` from
      the squared gradient at the initial point averaged over a large
      minibatch. The authors' TensorFlow Addons code starts :math:`v_0` at
      ``initial_accumulator_value = 1e-6`` and :math:`m_0` at zero;
      torch-optimizer starts **both** at ``initial_accumulator``, and so does
      this class. The extra :math:`\beta_1^{t}\, v_{\text{init}}` in :math:`m`
      matters only for gradients of order :math:`v_{\text{init}}` = 1e-6.
    * **Bias corrections and** :math:`\epsilon`. Algorithm 2 has no bias
      correction. Here, as in torch-optimizer and in ``torch.optim.Adam``,
      :math:`m` is divided by :math:`1-\beta_1^{t+1}` and :math:`v` by
      :math:`1-\beta_2^{t+1}` *before* :math:`\epsilon` is added. TensorFlow
      Addons multiplies :math:`\eta` by :math:`\sqrt{1-\beta_2^{t+1}}/(1-\beta_1^{t+1})`
      and adds :math:`\epsilon` to the uncorrected :math:`\sqrt{v}` (Adam's
      ":math:`\hat\epsilon`" form): the same step with
      :math:`\epsilon` scaled by :math:`\sqrt{1-\beta_2^{t+1}}`.
    * **Weight decay** is an L2 term added to the gradient (so it enters
      :math:`m` and :math:`v`), as in torch-optimizer; TensorFlow Addons
      instead applies l1/l2 proximal steps after the update.

    The defaults are both implementations': ``lr=1e-2``, ``betas=(0.9, 0.999)``
    and ``eps=1e-3`` (the settings of the paper's experiments) and
    ``initial_accumulator=1e-6`` (TensorFlow Addons' default since its authors
    changed it in 2020). ``lr`` is ten times Adam's default and
    ``eps`` :math:`10^5` times. With
    :math:`\epsilon` = 1e-3, coordinates whose gradients are much smaller than
    :math:`\epsilon` take momentum-SGD steps with rate about
    :math:`\eta/\epsilon`; only larger gradients get Adam's per-coordinate
    normalisation.

    State per parameter: ``step`` (a 0-dim tensor, :math:`t`), ``exp_avg``
    (:math:`m_t`) and ``exp_avg_sq`` (:math:`v_t`), the keys of
    torch-optimizer (whose ``step`` is a Python int). Complex parameters are
    treated as pairs of real ones.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-2).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)` (default: (0.9, 0.999)).
        eps: :math:`\epsilon \ge 0` (default: 1e-3).
        initial_accumulator: :math:`v_{\text{init}} \ge 0`, the initial value of
            both moments (default: 1e-6).
        weight_decay: :math:`\lambda \ge 0`, L2 penalty (default: 0).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it on CUDA and the single-tensor loop
            on CPU, as ``torch.optim`` does.
        maximize: maximize the objective instead of minimizing (default: False).
        capturable: not supported (must be False).
        differentiable: not supported (must be False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar (2018), *Adaptive Methods for
        Nonconvex Optimization*, NeurIPS (Algorithm 2).
    """

    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator: float = 1e-6,
        weight_decay: float = 0,
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
        check_nonnegative("initial_accumulator", initial_accumulator)
        check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags(
            type(self).__name__,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
            capturable=capturable,
            fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            initial_accumulator=initial_accumulator,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        v0 = _as_float(group["initial_accumulator"])
        return {
            "step": _new_step(p),
            "exp_avg": torch.full_like(p, v0, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.full_like(p, v0, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        beta1, beta2 = group["betas"]
        yogi(
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
            maximize=group["maximize"],
            foreach=group["foreach"],
            fused=group["fused"],
            has_complex=has_complex,
        )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-2,
    beta1: float | Tensor = 0.9,
    beta2: float | Tensor = 0.999,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional Yogi: update ``params`` and the state lists in place.

    See :class:`Yogi` for the equations. ``exp_avgs`` and ``exp_avg_sqs`` are
    :math:`m` and :math:`v`; ``state_steps`` are 0-dim float tensors holding
    :math:`t`, incremented here.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_yogi, "foreach": _multi_tensor_yogi, "fused": _fused_yogi}[impl]
    func(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr=_as_float(lr),
        beta1=_as_float(beta1),
        beta2=_as_float(beta2),
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
        has_complex=has_complex,
    )


def _single_tensor_yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = _as_float(state_steps[i])  # a Python float; the 0-dim tensor while compiling

        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_t

        # complex numbers: real and imaginary parts are separate coordinates
        theta, g, m, v = _real(theta), _real(g), _real(m), _real(v)

        m.mul_(beta1).add_(g, alpha=1 - beta1)  # m_{t+1} = beta1 m_t + (1 - beta1) g_t
        g2 = g * g
        # v_{t+1} = v_t - (1 - beta2) sign(v_t - g_t^2) g_t^2
        v.addcmul_(torch.sign(v - g2), g2, value=-(1 - beta2))

        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        denom = (v.sqrt() / _sqrt(bias_correction2)).add_(eps)  # sqrt(v_hat) + eps
        theta.addcdiv_(m, denom, value=-lr / bias_correction1)


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_yogi = _compiled_per_tensor(_single_tensor_yogi)


def _multi_tensor_yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype([params, grads, exp_avgs, exp_avg_sqs, state_steps])
    for (p_list, g_list, m_list, v_list, steps), _ in buckets.values():
        if has_complex:
            _view_as_real_lists(p_list, g_list, m_list, v_list)
        _increment_steps(steps)
        g_list = _foreach_l2_grads(p_list, g_list, maximize=maximize, weight_decay=weight_decay)

        torch._foreach_mul_(m_list, beta1)
        torch._foreach_add_(m_list, g_list, alpha=1 - beta1)
        g2 = torch._foreach_mul(g_list, g_list)
        del g_list
        signs = torch._foreach_sub(v_list, g2)
        torch._foreach_sign_(signs)
        torch._foreach_addcmul_(v_list, signs, g2, value=-(1 - beta2))
        del signs, g2

        ts = _step_values(steps)
        step_sizes = [-lr / (1 - beta1**t) for t in ts]
        bias_correction2_sqrts = [_sqrt(1 - beta2**t) for t in ts]
        denom = torch._foreach_sqrt(v_list)
        torch._foreach_div_(denom, bias_correction2_sqrts)
        torch._foreach_add_(denom, eps)
        _foreach_addcdiv_scaled_(p_list, m_list, denom, step_sizes)
