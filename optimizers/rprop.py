r"""Rprop: resilient backpropagation, a per-coordinate step size driven by gradient signs.

:class:`Rprop` is a drop-in replacement for :class:`torch.optim.Rprop`;
:func:`rprop` is its functional core.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    _is_dtensor,
    _foreach_flag,
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
)
from ._torch_phrases import check_lr, torch_phrase

__all__ = ["Rprop", "rprop"]


class Rprop(OptimizerBase):
    r"""Rprop: each coordinate moves by its own step size, grown while the gradient keeps its sign.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0,
    1, \dots`), :math:`\eta^-, \eta^+` = ``etas``, :math:`\Delta_{\min},
    \Delta_{\max}` = ``step_sizes``, and every operation per coordinate, the
    step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t)
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        s_t &= \operatorname{sign}(g_t\, p_t) \\
        \Delta_{t+1} &= \operatorname{clip}\!\left(\Delta_t\cdot
            \begin{cases} \eta^+ & s_t > 0 \\ \eta^- & s_t < 0 \\ 1 & s_t = 0 \end{cases},
            \;\Delta_{\min},\; \Delta_{\max}\right) \\
        p_{t+1} &= \begin{cases} 0 & s_t < 0 \\ g_t & \text{otherwise} \end{cases} \\
        \theta_{t+1} &= \theta_t - \operatorname{sign}(p_{t+1})\, \Delta_{t+1}

    with :math:`p_0 = 0` and :math:`\Delta_0 = ` ``lr`` in every coordinate.
    Only the *sign* of the gradient is used: the step is
    :math:`\pm\Delta_{t+1}` whatever the gradient's scale. A sign change means
    the last step jumped over a minimum along that coordinate: the step size
    shrinks by :math:`\eta^-` and that coordinate pauses for one step
    (:math:`p_{t+1} = 0`, so the next :math:`s` is 0 and the step size is
    kept).

    Conventions (those of ``torch.optim.Rprop``):

    * This is the variant without weight backtracking (Igel & Hüsken's
      iRprop\ :sup:`-`): after a sign change the coordinate is not moved back,
      it only skips one step. Riedmiller & Braun's original undoes the
      previous step.
    * ``lr`` is the initial step size :math:`\Delta_0`, not a multiplier
      of the gradient; a scheduler that changes ``lr`` later has no effect on
      the step sizes already in the state, and ``lr=0`` does not freeze the
      parameters (the clip lifts :math:`\Delta` to :math:`\Delta_{\min}`
      unless that is 0 too).
    * There is no ``weight_decay`` argument (put an L2 term in the loss).
    * Complex parameters are treated as pairs of real ones (each part has its
      own step size).

    State per parameter: ``step``, ``prev`` (:math:`p_t`) and ``step_size``
    (:math:`\Delta_t`), as in ``torch.optim.Rprop``.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: initial step size :math:`\Delta_0 \ge 0`, float or 1-element tensor (default: 1e-2).
        etas: :math:`(\eta^-, \eta^+)` with :math:`0 < \eta^- < 1 < \eta^+` (default: (0.5, 1.2)).
        step_sizes: :math:`(\Delta_{\min}, \Delta_{\max})` with
            :math:`0 \le \Delta_{\min} \le \Delta_{\max}` (default: (1e-6, 50)).
        capturable: not supported (must be False).
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

    References:
        Riedmiller & Braun (1993), *A Direct Adaptive Method for Faster
        Backpropagation Learning: The RPROP Algorithm*, IEEE ICNN.
        Igel & Hüsken (2000), *Improving the Rprop Learning Algorithm*, NC 2000.
    """

    _differentiable_supported = True
    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        _check_pair("etas", etas)
        with torch_phrase(f"Invalid eta values: {etas[0]}, {etas[1]}"):
            if not 0.0 < etas[0] < 1.0 < etas[1]:
                raise ValueError(
                    f"Invalid etas: {etas!r} (must satisfy 0 < etaminus < 1 < etaplus)"
                )
        _check_pair("step_sizes", step_sizes)
        if not 0.0 <= step_sizes[0] <= step_sizes[1]:
            raise ValueError(
                f"Invalid step_sizes: {step_sizes!r} (must satisfy 0 <= min step size <= max step size)"
            )
        _check_impl_flags(
            "Rprop", foreach=foreach, differentiable=differentiable, capturable=capturable,
            differentiable_supported=True,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            etas=etas,
            step_sizes=step_sizes,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        if fused:  # a group key torch.optim.Rprop does not have: only when used
            defaults["fused"] = fused
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        lr = _as_float(group["lr"])
        return {
            "step": _new_step(),
            "prev": torch.zeros_like(p, memory_format=torch.preserve_format),
            "step_size": torch.full_like(p, complex(lr, lr) if p.is_complex() else lr),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        rprop(
            params,
            grads,
            [s["prev"] for s in states],
            [s["step_size"] for s in states],
            [s["step"] for s in states],
            step_size_min=step_size_min,
            step_size_max=step_size_max,
            etaminus=etaminus,
            etaplus=etaplus,
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group.get("fused"),
            has_complex=has_complex,
        )


def _check_pair(name: str, value: Any) -> None:
    """``value`` must be a pair of real numbers (not NaN)."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    if not ok or not all(isinstance(v, numbers.Real) and v == v for v in value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a pair of real numbers)")


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def rprop(
    params: list[Tensor],
    grads: list[Tensor],
    prevs: list[Tensor],
    step_sizes: list[Tensor],
    state_steps: list[Tensor],
    *,
    step_size_min: float = 1e-6,
    step_size_max: float = 50.0,
    etaminus: float = 0.5,
    etaplus: float = 1.2,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional Rprop: update ``params`` and the state lists in place.

    ``prevs`` (:math:`p`), ``step_sizes`` (:math:`\Delta`) and
    ``state_steps`` (0-dim tensors, incremented here). See :class:`Rprop`.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_rprop, "foreach": _multi_tensor_rprop, "fused": _fused_rprop}[impl]
    func(
        params,
        grads,
        prevs,
        step_sizes,
        state_steps,
        step_size_min=step_size_min,
        step_size_max=step_size_max,
        etaminus=etaminus,
        etaplus=etaplus,
        maximize=maximize,
        has_complex=has_complex,
    )


def _signs_to_factors(s: Tensor, etaminus: float, etaplus: float) -> Tensor:
    """The sign s_t of g_t * p_t as the step-size factor eta+, eta- or 1 (a new tensor; a NaN stays NaN).

    ``masked_fill_`` (element-wise, in place on the new sign tensor ``s``) rather than masked
    assignment (``s[mask] = v``, aten.index_put_), which DTensor refuses on a sharded tensor
    (FSDP2); the values are the same. The masks are taken before any fill, so a filled value
    (eta+ = 1.2, say) is not caught by the next comparison.
    """
    positive, negative, zero = s.gt(0), s.lt(0), s.eq(0)
    return s.masked_fill_(positive, etaplus).masked_fill_(negative, etaminus).masked_fill_(zero, 1.0)


def _single_tensor_rprop(
    params: list[Tensor],
    grads: list[Tensor],
    prevs: list[Tensor],
    step_sizes: list[Tensor],
    state_steps: list[Tensor],
    *,
    step_size_min: float,
    step_size_max: float,
    etaminus: float,
    etaplus: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        state_steps[i] += 1
        # complex numbers: real and imaginary parts are separate coordinates
        theta, g, prev, delta = _real(theta), _real(g), _real(prevs[i]), _real(step_sizes[i])

        # with differentiable=True, tensors that autograd saves are cloned: the
        # state is updated in place afterwards (prev below, delta at the next step)
        differentiable = torch.is_grad_enabled()
        factor = _signs_to_factors(
            g.mul(prev.clone() if differentiable else prev).sign(), etaminus, etaplus
        )  # s_t = sign(g_t p_t) -> eta+, eta-, 1
        delta.mul_(factor).clamp_(step_size_min, step_size_max)  # Delta_{t+1}
        g = g.masked_fill(factor.eq(etaminus), 0)  # sign change: this coordinate pauses (a new tensor)

        theta.addcmul_(g.sign(), delta.clone() if differentiable else delta, value=-1)  # theta_{t+1} = theta_t - sign(p_{t+1}) * Delta_{t+1}
        prev.copy_(g)  # p_{t+1}


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_rprop = _compiled_per_tensor(_single_tensor_rprop)


def _multi_tensor_rprop(
    params: list[Tensor],
    grads: list[Tensor],
    prevs: list[Tensor],
    step_sizes: list[Tensor],
    state_steps: list[Tensor],
    *,
    step_size_min: float,
    step_size_max: float,
    etaminus: float,
    etaplus: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype([params, grads, prevs, step_sizes, state_steps])
    for (p_list, g_list, prev_list, delta_list, steps), _ in buckets.values():
        _increment_steps(steps)
        if has_complex:
            _view_as_real_lists(p_list, g_list, prev_list, delta_list)

        factors = torch._foreach_mul(g_list, prev_list)
        if maximize:
            torch._foreach_neg_(factors)
        # p_{t+1} is written straight into the state (the caller's grads stay untouched);
        # DTensor (FSDP2) has no sharding rule for _foreach_copy_, so copy one by one there
        if any(_is_dtensor(t) for t in prev_list):
            for prev_t, g_t in zip(prev_list, g_list):
                prev_t.copy_(g_t)
        else:
            torch._foreach_copy_(prev_list, g_list)
        if maximize:
            torch._foreach_neg_(prev_list)

        torch._foreach_sign_(factors)
        factor_list = [_signs_to_factors(s, etaminus, etaplus) for s in factors]
        torch._foreach_mul_(delta_list, factor_list)
        torch._foreach_clamp_min_(delta_list, step_size_min)
        torch._foreach_clamp_max_(delta_list, step_size_max)

        for g, s in zip(prev_list, factor_list):
            g.masked_fill_(s.eq(etaminus), 0)
        del factors, factor_list
        torch._foreach_addcmul_(p_list, torch._foreach_sign(prev_list), delta_list, value=-1)
