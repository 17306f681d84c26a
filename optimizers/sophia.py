r"""SophiaG: a clipped diagonal-Newton step with a Gauss-Newton-Bartlett curvature estimate.

:class:`SophiaG` has the interface of the official implementation (Liu et al.,
github.com/Liuhong99/Sophia, ``sophia.py``; packaged on PyPI as ``sophia-opt``):
the same constructor arguments and defaults, ``step(closure=None, bs=5120)`` and
``update_hessian()``, and the same state keys. :func:`sophiag` (the step) and
:func:`sophiag_update_hessian` (the curvature average) are its functional cores.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, TypeVar, overload

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _compiled_per_tensor,
    _check_nonnegative,
    _fmt,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
    _view_as_real_lists,
    _foreach_addcmul_scaled_,
)
from ._torch_phrases import check_betas, check_lr, check_nonnegative

__all__ = ["SophiaG", "sophiag", "sophiag_update_hessian"]

# What a closure returns (usually a loss Tensor or a float); ``step(closure)`` returns it.
_LossT = TypeVar("_LossT")

#: the constant the official code adds to the denominator :math:`\rho B h`
_DENOM_EPS = 1e-15


class SophiaG(OptimizerBase):
    r"""SophiaG: momentum divided by a diagonal curvature estimate, clipped per coordinate.

    With :math:`\theta_t` the parameters after :math:`t` steps, :math:`\eta`
    the learning rate ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\rho` ``rho``, :math:`\lambda` ``weight_decay``, :math:`B` the
    ``bs`` passed to :meth:`step`, :math:`\epsilon = 10^{-15}` and every
    operation per coordinate, :meth:`step` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t)
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        m_{t+1} &= \beta_1 m_t + (1-\beta_1)\, g_t \\
        \theta_{t+1} &= \theta_t\,(1-\eta\lambda)
            - \eta\, \operatorname{sign}(m_{t+1})\,
              \min\!\left(\frac{|m_{t+1}|}{\rho\, B\, h + \epsilon},\; 1\right)

    and :meth:`update_hessian`, which the training loop calls every
    :math:`k` steps (10 in the paper) right after a backward pass of the
    loss on labels **sampled from the model's own softmax**, does

    .. math::

        h \leftarrow \beta_2\, h + (1-\beta_2)\, \hat g \odot \hat g

    with :math:`\hat g` the gradient then in ``.grad`` and
    :math:`m_0 = h_0 = 0`. If :math:`\hat g` is the mean over :math:`B`
    sampled-label losses, :math:`B\, \hat g\odot\hat g` is the
    Gauss-Newton-Bartlett estimate of the diagonal of the Gauss-Newton matrix
    of the mean loss (its expectation), so :math:`B h` is an average of that
    curvature and :math:`\rho B h` is the paper's :math:`\gamma h_t`; hence
    ``bs`` must be the number of sampled labels (tokens) in a batch.

    Where :math:`\rho B h \ge |m|` the step is the diagonal Newton step
    :math:`\eta\, m / (\rho B h)`; elsewhere (small, zero or not yet
    estimated curvature, including every step before the first
    :meth:`update_hessian`) it is clipped to :math:`\eta\, \operatorname{sign}(m)`.
    No coordinate ever moves by more than :math:`\eta` (plus weight decay).

    Conventions (those of the official code, which this class reproduces to
    the last bit for real parameters; see ``tests/test_sophia.py``):

    * No bias correction of :math:`m` or :math:`h`.
    * Weight decay is decoupled (the parameters shrink by :math:`1-\eta\lambda`
      before the step), and on by default (:math:`\lambda = 0.1`).
    * The curvature EMA uses :math:`\beta_2` only in :meth:`update_hessian`;
      :meth:`step` never touches :math:`h`. The step counter counts
      :meth:`step` calls only.
    * Complex parameters are treated as pairs of real ones in both methods
      (the official ``update_hessian`` squares the complex gradient instead).

    State per parameter: ``step``, ``exp_avg`` (:math:`m_t`) and ``hessian``
    (:math:`h`), the official keys.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, the largest step per coordinate,
            float or 1-element tensor (default: 1e-4).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)`: momentum
            and curvature averages (default: (0.965, 0.99)).
        rho: :math:`\rho \ge 0`, the clipping scale (default: 0.04).
        weight_decay: :math:`\lambda \ge 0`, decoupled (default: 1e-1).
        maximize: maximize the objective instead of minimizing (default: False).
        capturable: not supported (must be False).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU.
        differentiable: not supported (must be False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    References:
        Liu, Li, Hall, Liang & Ma (2024), *Sophia: A Scalable Stochastic
        Second-order Optimizer for Language Model Pre-training*, ICLR.
    """

    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"capturable": False, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 1e-1,
        *,
        maximize: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        betas = check_betas(betas)
        _check_nonnegative("rho", rho)
        check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags(
            "SophiaG", foreach=foreach, differentiable=differentiable, capturable=capturable,
            fused=fused, fused_supported=True,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            rho=rho,
            weight_decay=weight_decay,
            maximize=maximize,
            capturable=capturable,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": _new_step(),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "hessian": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    @torch.no_grad()
    def update_hessian(self) -> None:
        r"""Fold the current gradients into the curvature average: :math:`h \leftarrow \beta_2 h + (1-\beta_2)\hat g^2`.

        Call it after a backward pass of the loss on labels sampled from the
        model (Gauss-Newton-Bartlett), or with any other per-coordinate
        square-root-of-curvature in ``.grad``. Parameters without a gradient
        are skipped.
        """
        for group in self.param_groups:
            params, grads, _, has_complex = self._gather(group)
            hessians = [self._lazy_state(p, group)["hessian"] for p in params]
            sophiag_update_hessian(
                params,
                hessians,
                grads,
                beta2=_as_float(group["betas"][1]),
                foreach=group["foreach"],
                has_complex=has_complex,
            )

    @overload
    def step(self, closure: None = None, bs: float = 5120) -> None: ...
    @overload
    def step(self, closure: Callable[[], _LossT], bs: float = 5120) -> _LossT: ...
    @torch.no_grad()
    def step(self, closure: Callable[[], _LossT] | None = None, bs: float = 5120) -> _LossT | None:
        """Perform one optimization step; return the closure's loss, if any.

        Args:
            closure: optional callable that re-evaluates the model and returns
                the loss. It runs with gradients enabled, before the update.
            bs: :math:`B > 0`, the number of sampled labels (tokens) behind
                each :meth:`update_hessian` gradient (default: 5120, the
                official default).
        """
        bs = _check_bs(bs)
        loss: _LossT | None = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group, bs)
        return loss

    def _step_group(self, group: dict[str, Any], bs: float = 5120) -> None:
        self._check_fused_once(group)
        params, grads, _, has_complex = self._gather(group)
        states = [self._lazy_state(p, group) for p in params]
        beta1, beta2 = group["betas"]
        sophiag(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["hessian"] for s in states],
            [s["step"] for s in states],
            bs=bs,
            beta1=_as_float(beta1),
            rho=_as_float(group["rho"]),
            lr=_as_float(group["lr"]),
            weight_decay=_as_float(group["weight_decay"]),
            maximize=group["maximize"],
            foreach=group["foreach"],
            fused=group["fused"],
            has_complex=has_complex,
        )


def _check_bs(bs: Any) -> float:
    """``bs`` must be a positive real number (or 1-element tensor); returned as a float."""
    if isinstance(bs, Tensor) and bs.numel() == 1 and not bs.is_complex():
        value = float(bs.item())
    elif isinstance(bs, numbers.Real) and not isinstance(bs, bool):
        value = float(bs)
    else:
        raise ValueError(f"Invalid bs: {_fmt(bs)} (must be a positive number: the batch size in tokens)")
    if not value > 0:
        raise ValueError(f"Invalid bs: {_fmt(bs)} (must be > 0: the batch size in tokens)")
    return value


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def sophiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    *,
    bs: float,
    beta1: float,
    rho: float,
    lr: float,
    weight_decay: float,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""Functional SophiaG step: update ``params``, ``exp_avgs`` and ``state_steps`` in place.

    ``hessians`` (:math:`h`) are read, not written. See :class:`SophiaG`.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_sophiag, "foreach": _multi_tensor_sophiag, "fused": _fused_sophiag}[impl]
    func(
        params,
        grads,
        exp_avgs,
        hessians,
        state_steps,
        bs=bs,
        beta1=beta1,
        rho=rho,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        has_complex=has_complex,
    )


def sophiag_update_hessian(
    params: list[Tensor],
    hessians: list[Tensor],
    grads: list[Tensor],
    *,
    beta2: float,
    foreach: bool | None = None,
    has_complex: bool | None = None,
) -> None:
    r"""In place: :math:`h \leftarrow \beta_2 h + (1-\beta_2)\, \hat g \odot \hat g` for every pair.

    ``params`` only choose the implementation (as for the step).
    """
    if has_complex is None:
        has_complex = any(torch.is_complex(p) for p in params)
    if _resolve_impl(params, foreach) == "foreach":
        if not hessians:
            return
        buckets = _group_by_device_and_dtype([list(hessians), list(grads)])
        for (h_list, g_list), _ in buckets.values():
            if has_complex:
                _view_as_real_lists(h_list, g_list)
            torch._foreach_mul_(h_list, beta2)
            torch._foreach_addcmul_(h_list, g_list, g_list, value=1 - beta2)
    else:
        for h, g in zip(hessians, grads):
            h, g = _real(h), _real(g)
            h.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def _single_tensor_sophiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    *,
    bs: float,
    beta1: float,
    rho: float,
    lr: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        state_steps[i] += 1
        # complex numbers: real and imaginary parts are separate coordinates
        theta, g, m, h = _real(theta), _real(g), _real(exp_avgs[i]), _real(hessians[i])

        theta.mul_(1 - lr * weight_decay)  # decoupled weight decay
        m.mul_(beta1).add_(g, alpha=1 - beta1)  # m_{t+1}
        ratio = (m.abs() / (rho * bs * h + _DENOM_EPS)).clamp(None, 1)  # min(|m| / (rho B h + eps), 1)
        theta.addcmul_(m.sign(), ratio, value=-lr)  # theta_{t+1}


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_sophiag = _compiled_per_tensor(_single_tensor_sophiag)


def _multi_tensor_sophiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    *,
    bs: float,
    beta1: float,
    rho: float,
    lr: float,
    weight_decay: float,
    maximize: bool,
    has_complex: bool,
) -> None:
    if not params:
        return
    buckets = _group_by_device_and_dtype([params, grads, exp_avgs, hessians, state_steps])
    for (p_list, g_list, m_list, h_list, steps), _ in buckets.values():
        _increment_steps(steps)
        if has_complex:
            _view_as_real_lists(p_list, g_list, m_list, h_list)
        if maximize:
            g_list = torch._foreach_neg(g_list)  # type: ignore[assignment]  # a list (stubs: tuple)

        torch._foreach_mul_(p_list, 1 - lr * weight_decay)
        torch._foreach_mul_(m_list, beta1)
        torch._foreach_add_(m_list, g_list, alpha=1 - beta1)

        denom = torch._foreach_mul(h_list, rho * bs)
        torch._foreach_add_(denom, _DENOM_EPS)
        ratio = torch._foreach_abs(m_list)
        torch._foreach_div_(ratio, denom)
        del denom
        torch._foreach_clamp_max_(ratio, 1)
        _foreach_addcmul_scaled_(p_list, torch._foreach_sign(m_list), ratio, [-lr] * len(p_list))
