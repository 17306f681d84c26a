r"""Adagrad: per-coordinate step sizes from the sum of squared gradients.

:class:`Adagrad` is a drop-in replacement for :class:`torch.optim.Adagrad`;
:func:`adagrad` is its functional core.
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
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _step_values,
    _view_as_real_lists,
)
from ._torch_phrases import check_lr, check_nonnegative

__all__ = ["Adagrad", "adagrad"]


class Adagrad(OptimizerBase):
    r"""Adagrad: divide each coordinate's step by the root of its accumulated squared gradients.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0, 1,
    \dots`), :math:`\eta` ``lr``, :math:`\nu` ``lr_decay``, :math:`\lambda`
    ``weight_decay``, :math:`\epsilon` ``eps`` and :math:`s_0`
    ``initial_accumulator_value``, the step from :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t) + \lambda\,\theta_t
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        \eta_t &= \frac{\eta}{1 + t\,\nu} \\
        s_{t+1} &= s_t + g_t^2 \\
        \theta_{t+1} &= \theta_t - \eta_t\, \frac{g_t}{\sqrt{s_{t+1}} + \epsilon}

    After this step the ``step`` counter is :math:`t + 1`, so torch's
    :math:`\eta / (1 + (\text{step} - 1)\,\nu)` is :math:`\eta_t` above.

    Conventions (those of ``torch.optim.Adagrad``):

    * :math:`\epsilon` is added **outside** the square root.
    * The accumulator starts at :math:`s_0` (``initial_accumulator_value``,
      default 0) and, as in torch, is created when the optimizer is
      constructed (not lazily), so a fresh state dict already holds it. A
      param group's own ``initial_accumulator_value`` is honoured (torch uses
      the constructor's value for every group).
    * ``lr_decay`` divides the learning rate by :math:`1 + t\nu`
      (:math:`t` steps taken before this one); it is not in Duchi et al.
    * Sparse gradients are supported (single-tensor code; only the rows
      present in the gradient are updated, and ``weight_decay`` must be 0).
    * Complex parameters are treated as pairs of real ones.

    State per parameter: ``step`` (0-dim tensor :math:`t`) and ``sum``
    (:math:`s_t`), as in ``torch.optim.Adagrad``.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-2).
        lr_decay: :math:`\nu \ge 0` (default: 0).
        weight_decay: L2 penalty :math:`\lambda \ge 0` (default: 0).
        initial_accumulator_value: :math:`s_0 \ge 0` (default: 0).
        eps: :math:`\epsilon \ge 0` (default: 1e-10).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU, where it is
            faster for large models (see ``benchmarks/results/step_times.md``).
        maximize: maximize the objective instead of minimizing (default: False).
        differentiable: record the step in autograd (single-tensor path), as
            ``torch.optim`` does (default: False).
        fused: use torch's fused kernel ``torch._fused_adagrad_`` (no sparse
            or complex tensors) (default: None).

    Reference:
        Duchi, Hazan & Singer (2011), *Adaptive Subgradient Methods for Online
        Learning and Stochastic Optimization*, JMLR 12.
    """

    _differentiable_supported = True
    _supports_sparse = True
    _fused_supported = True
    _group_fallbacks = {"fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative("lr_decay", lr_decay)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("initial_accumulator_value", initial_accumulator_value)
        check_nonnegative("eps", eps, "epsilon")
        _check_impl_flags(
            "Adagrad",
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
            differentiable_supported=True,
            fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)
        # torch.optim.Adagrad creates its state eagerly; so do we.
        for group in self.param_groups:
            for p in group["params"]:
                self._lazy_state(p, group)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        s0 = group["initial_accumulator_value"]
        return {
            "step": _new_step(p, fused=group["fused"]),
            "sum": torch.full_like(
                p, complex(s0, s0) if torch.is_complex(p) else s0,
                memory_format=torch.preserve_format,
            ),
        }

    def share_memory(self) -> None:
        """Move the ``sum`` accumulators to shared memory (for Hogwild-style training)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, has_sparse, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        adagrad(
            params,
            grads,
            [s["sum"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            lr_decay=group["lr_decay"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            foreach=_foreach_flag(group),
            fused=group["fused"],
            has_sparse_grad=has_sparse,
            has_complex=has_complex,
        )


def adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_sparse_grad: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional Adagrad: update ``params``, ``state_sums`` (:math:`s`) and
    ``state_steps`` (0-dim tensors) in place. See :class:`Adagrad`."""
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_sparse_grad is None:
        has_sparse_grad = any(g.is_sparse for g in grads)
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_adagrad, "foreach": _multi_tensor_adagrad, "fused": _fused_adagrad}[impl]
    func(
        params,
        grads,
        state_sums,
        state_steps,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize,
        has_sparse_grad=has_sparse_grad,
        has_complex=has_complex,
    )


def _single_tensor_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    has_sparse_grad: bool,
    has_complex: bool,
) -> None:
    for theta, g, s, step_t in zip(params, grads, state_sums, state_steps):
        step_t += 1
        t = _as_float(step_t)
        g = g if not maximize else -g
        if weight_decay != 0:
            if g.is_sparse:
                raise RuntimeError("Adagrad: weight_decay is not compatible with sparse gradients")
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda * theta_{t-1}

        lr_t = lr / (1 + (t - 1) * lr_decay)  # eta / (1 + (step - 1) * nu)

        if g.is_sparse:
            # The update is not linear in g: merge duplicate indices first,
            # then touch only the rows present in the gradient.
            g = g.coalesce()
            indices, values = g._indices(), g._values()
            s.add_(torch.sparse_coo_tensor(indices, values.pow(2), g.size(), check_invariants=False))  # s_t = s_{t-1} + g_t^2
            std_values = s.sparse_mask(g)._values().sqrt_().add_(eps)  # sqrt(s_t) + eps
            theta.add_(
                torch.sparse_coo_tensor(indices, values / std_values, g.size(), check_invariants=False),
                alpha=-lr_t,  # type: ignore[arg-type]  # (a 0-dim Tensor with a Tensor lr)
            )
        else:
            theta, g, s = _real(theta), _real(g), _real(s)
            s.addcmul_(g, g, value=1)  # s_t = s_{t-1} + g_t^2
            std = s.sqrt()
            # sqrt(s_t) + eps; out of place when autograd records the step
            # (differentiable=True), as sqrt's backward reads its output
            std = std + eps if torch.is_grad_enabled() else std.add_(eps)
            theta.addcdiv_(g, std, value=-lr_t)  # type: ignore[arg-type]  # theta_t = theta_{t-1} - eta_t * g_t / std


def _multi_tensor_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    has_sparse_grad: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype([params, grads, state_sums, state_steps])
    for (p_list, g_list, s_list, steps), _ in buckets.values():
        if has_sparse_grad and any(g.is_sparse for g in g_list):
            # foreach kernels do not take sparse tensors: loop over this bucket.
            _single_tensor_adagrad(
                p_list, g_list, s_list, steps, lr=lr, lr_decay=lr_decay,
                weight_decay=weight_decay, eps=eps, maximize=maximize,
                has_sparse_grad=True, has_complex=has_complex,
            )
            continue
        if has_complex:
            _view_as_real_lists(p_list, g_list, s_list)
        _increment_steps(steps)
        g_list = _foreach_l2_grads(p_list, g_list, maximize=maximize, weight_decay=weight_decay)

        # (while compiling, a list of 0-dim tensors: the foreach mul takes it as a TensorList)
        minus_lr_t = [_as_float(-lr / (1 + (t - 1) * lr_decay)) for t in _step_values(steps)]
        torch._foreach_addcmul_(s_list, g_list, g_list, value=1)
        std = torch._foreach_sqrt(s_list)
        torch._foreach_add_(std, eps)
        if weight_decay != 0 or maximize:
            torch._foreach_mul_(g_list, minus_lr_t)  # reuse our own copy
            numerator = g_list
        else:
            numerator = torch._foreach_mul(g_list, minus_lr_t)  # type: ignore[assignment]  # a list (stubs: tuple)
        torch._foreach_addcdiv_(p_list, numerator, std)


def _fused_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    has_sparse_grad: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    if has_sparse_grad or has_complex:
        raise RuntimeError(
            "Adagrad with fused=True does not support sparse gradients or complex params"
        )
    lr = _as_float(lr)
    buckets = _group_by_device_and_dtype([params, grads, state_sums, state_steps])
    for (p_list, g_list, s_list, steps), _ in buckets.values():
        torch._foreach_add_(steps, 1)
        torch._fused_adagrad_(
            p_list,
            g_list,
            s_list,
            steps,
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
        )
