r"""Lion: evolved sign momentum, one state buffer per parameter.

:class:`Lion` is the optimizer found by program search in Chen et al.
(2023); it equals ``lion_pytorch.Lion`` (lucidrains) in that package's default
configuration and with weight decay. :func:`lion` is its functional core.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _compiled_per_tensor,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _view_as_real_lists,
    _foreach_add_scaled_,
)
from ._torch_phrases import check_betas, check_lr, check_nonnegative

__all__ = ["Lion", "lion"]


class Lion(OptimizerBase):
    r"""Lion: the sign of an interpolation of momentum and gradient, with decoupled weight decay.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0,
    1, \dots`), :math:`\eta` the learning rate ``lr``, :math:`\beta_1,
    \beta_2` = ``betas`` and :math:`\lambda` ``weight_decay``, every
    operation per coordinate, the step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t)
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        c_t &= \beta_1 m_t + (1-\beta_1)\, g_t \\
        \theta_{t+1} &= \theta_t\,(1-\eta\lambda) - \eta\,\operatorname{sign}(c_t) \\
        m_{t+1} &= \beta_2 m_t + (1-\beta_2)\, g_t

    with :math:`m_0 = 0` and :math:`\operatorname{sign}(0) = 0`. The update
    interpolates the momentum with the current gradient using :math:`\beta_1`
    but stores a momentum that forgets with :math:`\beta_2` (default
    :math:`\beta_2 > \beta_1`: the step reacts faster to a new gradient than
    the memory does). Every coordinate of the step before weight decay is
    :math:`-\eta`, :math:`0` or :math:`+\eta`, whatever the gradient's scale.

    Conventions:

    * Weight decay is **decoupled** and proportional to the learning rate,
      :math:`\theta(1-\eta\lambda)`, applied before the sign step, as in
      Algorithm 2 of Chen et al. and in ``lion_pytorch.Lion`` with its default
      ``decoupled_weight_decay=False`` (lucidrains' ``True`` divides
      :math:`\lambda` by the initial ``lr``, which this class does not offer).
      Because the sign step is large, Lion's :math:`\eta` is typically 3-10x
      smaller and :math:`\lambda` 3-10x larger than AdamW's, so that
      :math:`\eta\lambda` stays comparable.
    * :math:`c_t` and :math:`m_{t+1}` are computed with ``lerp``
      (:math:`m_t + (1-\beta)(g_t - m_t)`): the same numbers up to rounding.
    * No bias correction and no :math:`\epsilon`: the sign needs neither.
    * Complex parameters are treated as pairs of real ones (the sign is taken
      of the real and the imaginary part separately; ``lion_pytorch`` takes
      :math:`c/|c|` instead).

    State per parameter: ``step`` (a 0-dim tensor, :math:`t`, bookkeeping
    only) and ``exp_avg`` (:math:`m_t`): one buffer the size of the
    parameter, where Adam keeps two.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-4).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)` (default: (0.9, 0.99)).
        weight_decay: :math:`\lambda \ge 0` (default: 0).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU.
        maximize: maximize the objective instead of minimizing (default: False).
        capturable: not supported (must be False).
        differentiable: not supported (must be False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    References:
        Chen, Liang, Huang, Real, Wang, Liu, Pham, Dong, Luong, Hsieh, Lu &
        Le (2023), *Symbolic Discovery of Optimization Algorithms*, NeurIPS.
    """

    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        betas = check_betas(betas)
        check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags(
            "Lion", foreach=foreach, differentiable=differentiable, capturable=capturable,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": _new_step(),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        beta1, beta2 = group["betas"]
        lion(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=group["foreach"],
            fused=group["fused"],
            has_complex=has_complex,
        )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-4,
    beta1: float | Tensor = 0.9,
    beta2: float | Tensor = 0.99,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional Lion: update ``params``, ``exp_avgs`` (:math:`m`) and ``state_steps`` in place.

    See :class:`Lion` for the equations. ``state_steps`` are 0-dim float
    tensors, incremented here.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_lion, "foreach": _multi_tensor_lion, "fused": _fused_lion}[impl]
    func(
        params,
        grads,
        exp_avgs,
        state_steps,
        lr=_as_float(lr),
        beta1=_as_float(beta1),
        beta2=_as_float(beta2),
        weight_decay=_as_float(weight_decay),
        maximize=maximize,
        has_complex=has_complex,
    )


def _single_tensor_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        state_steps[i] += 1
        # complex numbers: real and imaginary parts are separate coordinates
        theta, g, m = _real(theta), _real(g), _real(exp_avgs[i])

        if weight_decay != 0:
            theta.mul_(1 - lr * weight_decay)  # theta_t (1 - eta lambda)
        c = m.lerp(g, 1 - beta1)  # c_t = beta1 m_t + (1 - beta1) g_t
        theta.add_(c.sign_(), alpha=-lr)  # - eta sign(c_t)
        m.lerp_(g, 1 - beta2)  # m_{t+1} = beta2 m_t + (1 - beta2) g_t


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_lion = _compiled_per_tensor(_single_tensor_lion)


def _multi_tensor_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype([params, grads, exp_avgs, state_steps])
    for (p_list, g_list, m_list, steps), _ in buckets.values():
        _increment_steps(steps)
        if maximize:
            g_list = torch._foreach_neg(g_list)  # type: ignore[assignment]  # a list (stubs: tuple)
        else:
            g_list = list(g_list)
        if has_complex:
            _view_as_real_lists(p_list, g_list, m_list)

        if weight_decay != 0:
            torch._foreach_mul_(p_list, 1 - lr * weight_decay)
        c_list = torch._foreach_lerp(m_list, g_list, 1 - beta1)
        torch._foreach_sign_(c_list)
        _foreach_add_scaled_(p_list, c_list, -lr)
        del c_list
        torch._foreach_lerp_(m_list, g_list, 1 - beta2)
