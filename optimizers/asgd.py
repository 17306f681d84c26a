r"""ASGD: averaged stochastic gradient descent (Polyak-Ruppert averaging).

:class:`ASGD` is a drop-in replacement for :class:`torch.optim.ASGD`;
:func:`asgd` is its functional core.
"""

from __future__ import annotations

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
    _foreach_l2_grads,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _real_number,
    _resolve_impl,
    _scalar_dtype,
    _view_as_real_lists,
)
from ._torch_phrases import check_lr, check_nonnegative

__all__ = ["ASGD", "asgd"]


class ASGD(OptimizerBase):
    r"""ASGD: SGD with a slowly decaying step and a running average of the iterates.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0,
    1, \dots`), :math:`\eta` ``lr``, :math:`\lambda` ``lambd``,
    :math:`\alpha` ``alpha``, :math:`t_0` ``t0`` and :math:`\omega`
    ``weight_decay``, the step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) + \omega\,\theta_t
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        \theta_{t+1} &= (1 - \lambda\eta_t)\, \theta_t - \eta_t\, g_t \\
        \bar\theta_{t+1} &= \bar\theta_t + \mu_t\,(\theta_{t+1} - \bar\theta_t) \\
        \eta_{t+1} &= \frac{\eta}{(1 + \lambda\eta\, (t+1))^{\alpha}}, \qquad
        \mu_{t+1} = \frac{1}{\max(1,\; t + 1 - t_0)}

    with :math:`\eta_0 = \eta`, :math:`\mu_0 = 1` and :math:`\bar\theta_0 = 0`
    (:math:`t + 1` is the ``step`` counter after the step). The parameters
    follow SGD with the step :math:`\eta_t \propto t^{-\alpha}` (once
    :math:`\lambda\eta t \gg 1`) and an extra decay
    :math:`\lambda\eta_t\theta_t`; the average :math:`\bar\theta` (state
    ``ax``) copies the iterate for the first :math:`t_0 + 2` steps and from
    then on is the plain mean of the iterates from :math:`\theta_{t_0 + 2}`
    on. With a step that decays more slowly than :math:`1/t`
    (:math:`\tfrac12 < \alpha < 1`), the average attains the optimal
    :math:`O(1/t)` rate of stochastic approximation that the last iterate
    does not (Polyak & Juditsky).

    Conventions (those of ``torch.optim.ASGD``):

    * **The model's parameters are the last iterate** :math:`\theta_t`, not the
      average: to evaluate the averaged model, copy ``state["ax"]`` into the
      parameters yourself (``torch.optim.swa_utils.AveragedModel`` is the
      other route).
    * :math:`\lambda` both decays the parameters (like weight decay with rate
      :math:`\lambda\eta_t`) and sets the time scale of the step decay;
      :math:`\omega` is a separate L2 term in the gradient.
    * :math:`\eta_t` and :math:`\mu_t` are kept as 0-dim tensors in the state
      (``eta``, ``mu``) in the scalar dtype (float32 unless the default dtype
      is float64), so they carry float32 rounding as in torch. The
      multi-tensor path computes the new :math:`\eta` in that dtype (torch's
      does too), the single-tensor path in float64 before storing it: the two
      paths can differ in the last float32 bit of :math:`\eta_t`.
    * Complex parameters are treated as pairs of real ones.

    State per parameter: ``step``, ``eta`` (:math:`\eta_t`), ``mu``
    (:math:`\mu_t`) and ``ax`` (:math:`\bar\theta_t`), as in ``torch.optim.ASGD``.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-2).
        lambd: decay term :math:`\lambda \ge 0` (default: 1e-4).
        alpha: power :math:`\alpha \ge 0` of the step decay (default: 0.75).
        t0: step :math:`t_0 \ge 0` from which the average starts (default: 1e6).
        weight_decay: L2 penalty :math:`\omega \ge 0` (default: 0).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU.
        maximize: maximize the objective instead of minimizing (default: False).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).
        capturable: not supported (must be False).

    References:
        Polyak & Juditsky (1992), *Acceleration of Stochastic Approximation by
        Averaging*, SIAM J. Control and Optimization 30(4).
        Bottou (2012), *Stochastic Gradient Descent Tricks*, in Neural
        Networks: Tricks of the Trade (the step schedule and :math:`\lambda`).
    """

    _differentiable_supported = True
    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative("weight_decay", weight_decay)
        # torch.optim accepts any lambd, alpha, t0; negative ones make the
        # step grow or the average weights exceed one
        for name, value in (("lambd", lambd), ("alpha", alpha), ("t0", t0)):
            if not _real_number(name, value) >= 0:
                raise ValueError(f"Invalid {name}: {value!r} (must be >= 0)")
        _check_impl_flags(
            "ASGD", foreach=foreach, differentiable=differentiable, capturable=capturable,
            differentiable_supported=True,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            lambd=lambd,
            alpha=alpha,
            t0=t0,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        if fused:  # a group key torch.optim.ASGD does not have: only when used
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # load_state_dict casts every state tensor but ``step`` to the
        # parameter's dtype; keep eta_t and mu_t in the scalar dtype they are
        # computed in (a lossless round trip), so that a resumed run is
        # bit-identical to an uninterrupted one (torch.optim.ASGD keeps the cast
        # copies, whose later values then round differently). Old state dicts
        # may hold Python numbers.
        for p_state in self.state.values():
            for key in ("eta", "mu"):
                if key not in p_state:
                    continue
                value = p_state[key]
                if not torch.is_tensor(value):
                    p_state[key] = torch.tensor(float(value), dtype=_scalar_dtype())
                elif value.dtype != _scalar_dtype():
                    p_state[key] = value.to(dtype=_scalar_dtype())

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        lr = group["lr"]
        return {
            "step": _new_step(),
            "eta": torch.as_tensor(lr, dtype=_scalar_dtype()).detach().clone().reshape(()),
            "mu": torch.ones((), dtype=_scalar_dtype()),
            "ax": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        asgd(
            params,
            grads,
            [s["ax"] for s in states],
            [s["mu"] for s in states],
            [s["eta"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            lambd=group["lambd"],
            alpha=group["alpha"],
            t0=group["t0"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group.get("fused"),
            has_complex=has_complex,
        )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def asgd(
    params: list[Tensor],
    grads: list[Tensor],
    axs: list[Tensor],
    mus: list[Tensor],
    etas: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional ASGD: update ``params`` and the state lists in place.

    ``axs`` (:math:`\bar\theta`), and the 0-dim tensors ``mus`` (:math:`\mu_t`),
    ``etas`` (:math:`\eta_t`) and ``state_steps`` (incremented here). See
    :class:`ASGD`.
    """
    for name, lst in (("state_steps", state_steps), ("etas", etas), ("mus", mus)):
        if not all(torch.is_tensor(s) for s in lst):
            raise TypeError(f"{name} must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_asgd, "foreach": _multi_tensor_asgd, "fused": _fused_asgd}[impl]
    func(
        params,
        grads,
        axs,
        mus,
        etas,
        state_steps,
        lr=lr,
        lambd=lambd,
        alpha=alpha,
        t0=t0,
        weight_decay=weight_decay,
        maximize=maximize,
        has_complex=has_complex,
    )


def _single_tensor_asgd(
    params: list[Tensor],
    grads: list[Tensor],
    axs: list[Tensor],
    mus: list[Tensor],
    etas: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    # A tensor lr stays a tensor: eta_{t+1} then rounds as in torch.optim.
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        # complex numbers: real and imaginary parts are separate coordinates
        theta, g, ax = _real(theta), _real(g), _real(axs[i])
        state_steps[i] += 1
        n = _as_float(state_steps[i])  # gradients seen, t + 1 (the 0-dim tensor while compiling)

        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + omega * theta_t

        eta_t = _as_float(etas[i])
        theta.mul_(1 - lambd * eta_t)  # (1 - lambda * eta_t) * theta_t
        theta.add_(g, alpha=-eta_t)  # ... - eta_t * g_t

        if _compiling() or mus[i].item() != 1:  # (no branch on a traced value)
            # (mu_t cloned under autograd, differentiable=True: it is overwritten below)
            mu_t = mus[i].clone() if torch.is_grad_enabled() else mus[i]
            ax.add_(theta.sub(ax).mul_(mu_t))  # theta_bar += mu_t * (theta_{t+1} - theta_bar)
        else:
            ax.copy_(theta)  # mu_t = 1: the average is the iterate

        etas[i].copy_(torch.as_tensor(lr / ((1 + lambd * lr * n) ** alpha)))
        if _compiling():
            mus[i].copy_(1 / torch.clamp(cast(Tensor, n) - t0, min=1))  # n: a 0-dim tensor while compiling
            continue
        mus[i].copy_(torch.as_tensor(1 / max(1, n - t0)))


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_asgd = _compiled_per_tensor(_single_tensor_asgd)


def _multi_tensor_asgd(
    params: list[Tensor],
    grads: list[Tensor],
    axs: list[Tensor],
    mus: list[Tensor],
    etas: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype([params, grads, axs, mus, etas, state_steps])
    for (device, _), ((p_list, g_list, ax_list, mu_list, eta_list, steps), _) in buckets.items():
        if has_complex:
            _view_as_real_lists(p_list, g_list, ax_list)
        _increment_steps(steps)

        # theta <- theta - eta_t * (g_t + (omega + lambda) theta): the single-tensor
        # update with the two terms in theta gathered (torch.optim's order)
        if maximize or weight_decay != 0:  # a fresh list: add lambda * theta in place
            g_list = _foreach_l2_grads(p_list, g_list, maximize=maximize, weight_decay=weight_decay)
            torch._foreach_add_(g_list, p_list, alpha=lambd)
        else:
            g_list = torch._foreach_add(g_list, p_list, alpha=lambd)  # type: ignore[assignment]  # a list (stubs: tuple)
        torch._foreach_addcmul_(p_list, g_list, eta_list, value=-1)
        del g_list

        diffs = torch._foreach_sub(p_list, ax_list)
        torch._foreach_addcmul_(ax_list, diffs, mu_list)  # theta_bar += mu_t * (theta_{t+1} - theta_bar)
        del diffs

        # eta_{t+1} in the steps' dtype (the counters are tensors here)
        new_etas = [torch.as_tensor(lr / ((1 + lambd * lr * n) ** alpha), device=device) for n in steps]
        if _compiling():  # no host read of the counters
            new_mus = [1 / torch.clamp(n - t0, min=1) for n in steps]
        else:
            new_mus = [torch.as_tensor(1 / max(1, n.item() - t0), device=device) for n in steps]
        torch._foreach_copy_(eta_list, new_etas)
        torch._foreach_copy_(mu_list, new_mus)
