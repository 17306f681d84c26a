r"""A2Grad: adaptive and accelerated stochastic gradient descent (Deng, Cheng and Lan, 2018).

:class:`A2Grad` implements the three variants of the paper (``"uni"``,
``"inc"``, ``"exp"``) in two granularities: the paper's per-coordinate
(diagonal) scaling, and one scalar per parameter tensor, which is what
``torch_optimizer.A2GradUni``/``A2GradInc``/``A2GradExp`` compute.
:func:`a2grad` is its functional core.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    _is_dtensor,
    _foreach_l2_grads,
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _compiled_per_tensor,
    _check_lr,
    _check_nonnegative,
    _check_range,
    _compiling,
    _foreach_addcdiv_scaled_,
    _foreach_addcmul_scaled_,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _real_number,
    _resolve_impl,
    _sqrt,
    _step_values,
    _view_as_real_lists,
)

__all__ = ["A2Grad", "a2grad", "VARIANTS"]

#: the moving averages of the squared gradient deviations defined in the paper
VARIANTS = ("uni", "inc", "exp")


class A2Grad(OptimizerBase):
    r"""A2Grad: Nesterov-style acceleration with an AdaGrad-like term built from gradient deviations.

    With :math:`k = 0, 1, \dots` the index of the step, :math:`y_k` the
    parameters (the point where the gradient is evaluated), :math:`x_k` an
    auxiliary sequence kept in the state (:math:`x_0 = y_0`), :math:`L` ``lips``,
    :math:`\beta` ``beta``, :math:`\rho` ``rho``, :math:`\eta` ``lr`` (a
    multiplier, default 1) and :math:`\lambda` ``weight_decay``, one step does

    .. math::

        g_k &= \pm\nabla f_k(y_k) + \lambda\, y_k
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        \bar g_k &= \tfrac{1}{k+1} \textstyle\sum_{i=0}^{k} g_i
                  = \bar g_{k-1} + \tfrac{1}{k+1}\,(g_k - \bar g_{k-1}) \\
        \delta_k &= g_k - \bar g_k \\
        \texttt{uni:}\quad v_k &= v_{k-1} + \delta_k^2, \qquad h_k = \sqrt{v_k} \\
        \texttt{inc:}\quad v_k &= \tfrac{k^2}{(k+1)^2}\, v_{k-1} + \delta_k^2,
              \qquad h_k = \sqrt{v_k} \\
        \texttt{exp:}\quad \tilde v_k &= \rho\, \tilde v_{k-1} + (1-\rho)\,\delta_k^2,
              \quad v_k = \max(v_{k-1}, \tilde v_k), \quad h_k = \sqrt{(k+1)\, v_k} \\
        \gamma_k &= \frac{2L}{k+1}, \qquad \alpha_k = \frac{2}{k+2},
              \qquad c_k = \frac{\eta}{\gamma_k + \beta h_k} \\
        x_{k+1} &= x_k - c_k\, g_k \\
        y_{k+1} &= (1-\alpha_{k+1})\, y_k + \alpha_{k+1}\, x_{k+1}
                   - (1-\alpha_{k+1})\,\alpha_k\, c_k\, g_k

    with :math:`v_{-1} = \tilde v_{-1} = 0`. This is the paper's practical
    two-sequence form of its three-sequence accelerated scheme (the
    parameters hold the point where the next gradient is taken).

    :math:`\delta_k` is the paper's practical heuristic (the deviation from
    the running mean of the gradients). Its theorems are about the true noise
    :math:`g_k - \nabla f(y_k)`, which no optimizer can compute; the rates
    they prove (for ``uni`` and ``inc`` with iterates in an
    :math:`\ell_\infty`-ball, for ``exp`` also sub-Gaussian noise) do not
    cover this heuristic. The paper starts ``exp`` at
    :math:`\tilde v_0 = \delta_0^2`; with the heuristic :math:`\delta_0 = 0`,
    so starting from :math:`\tilde v_{-1} = 0` gives the same trajectory.

    Conventions (where implementations differ):

    * **Granularity.** ``per_coordinate=True`` (default, the paper):
      :math:`\delta_k^2`, :math:`v_k`, :math:`h_k` and :math:`c_k` are
      element-wise. ``per_coordinate=False``: :math:`\delta_k^2` is replaced
      by the squared norm :math:`\lVert\delta_k\rVert^2` of the whole tensor,
      so every parameter tensor has one scalar :math:`h_k`; this is what
      ``torch_optimizer.A2GradUni/Inc/Exp`` (0.3.0) compute, and the
      trajectories agree with theirs.
    * **The running mean** uses weight :math:`1/(k+1)` on the new gradient
      (an exact average, so no bias correction is needed). Inverting it
      (weight :math:`k+1`) makes :math:`\bar g` explode.
    * Only ``exp`` multiplies by :math:`k+1` inside :math:`h_k`; ``inc``
      does not (its :math:`v_k` already grows like :math:`k`).
    * :math:`\delta_0 = 0`, so the first step is plain :math:`c_0 = \eta/(2L)`.
    * **lr.** A2Grad has no learning rate; ``lr`` is a multiplier of
      :math:`c_k` (default 1, the paper's method). Multiplying it by
      :math:`s` is the same as dividing both :math:`L` and :math:`\beta` by
      :math:`s`. An ``lr_scheduler`` therefore works on it as usual and
      scales every later step (``lr=0`` freezes a group exactly), on top of
      the method's own schedule :math:`\gamma_k`, :math:`\alpha_k`. Leaving
      ``lr`` at 1 without a scheduler runs the paper's algorithm.
    * **Weight decay** is coupled (an L2 penalty added to :math:`g_k`).
    * Complex parameters are treated as pairs of real ones.
    * **No temporaries.** With :math:`d_k = g_k - \bar g_{k-1}` and
      :math:`w_k = k/(k+1)`, :math:`\delta_k = w_k d_k` and
      :math:`\bar g_k = g_k - w_k d_k`, so the buffer of :math:`\bar g` first
      holds :math:`-d_k` (to accumulate :math:`w_k^2 d_k^2`) and then
      :math:`\bar g_k`: no parameter-sized temporary is allocated except the
      denominator of the per-coordinate form.
    * **No host synchronisation.** Nothing computed on the parameters'
      device is read back by the step: :math:`h_k` and :math:`c_k` stay
      tensors (torch-optimizer calls ``.item()`` on every tensor at every
      step). The step counters are 0-dim tensors on the CPU, as in
      ``torch.optim``, so reading them is free; a tensor ``lr`` is read with
      ``.item()`` (keep it on the CPU).

    State per parameter: ``step`` (0-dim CPU tensor, steps taken),
    ``grad_avg`` (:math:`\bar g`), ``x`` (:math:`x_k`) and ``v``
    (:math:`v_k`); with ``variant="exp"`` also ``v_tilde``
    (:math:`\tilde v_k`). ``v`` and ``v_tilde`` have the parameter's shape
    when ``per_coordinate`` and are 0-dim otherwise. So the per-tensor form
    stores two parameter-sized tensors (as many as AdamW), the per-coordinate
    form three (``uni``, ``inc``) or four (``exp``).

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        beta: weight :math:`\beta \ge 0` of the adaptive term (default: 10).
        lips: the Lipschitz-constant estimate :math:`L > 0` (default: 10).
        rho: :math:`\rho \in [0, 1]`, smoothing of ``exp`` (default: 0.5).
        variant: ``"uni"``, ``"inc"`` or ``"exp"`` (default: ``"uni"``).
        per_coordinate: element-wise :math:`h_k` (the paper) if True, one
            scalar per tensor (torch-optimizer) if False (default: True).
            Fixed once a parameter has state.
        lr: multiplier :math:`\eta \ge 0` of the step, float or 1-element
            tensor (default: 1).
        weight_decay: L2 penalty :math:`\lambda \ge 0` (default: 0).
        maximize: maximize the objective instead of minimizing (default: False).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` follows torch.optim's rule: foreach for plain tensors on
            CUDA and other accelerators, the single-tensor loop on the CPU,
            where it is faster (default: None).
        differentiable: not supported (must be False).
        fused: run each large tensor's whole update as one compiled loop (one pass over
            memory; ``torch.compile`` on first use, see
            :func:`optimizers._base._compiled_per_tensor`); CPU or CUDA (default: None).

    Reference:
        Deng, Cheng, Lan (2018), *Optimal Adaptive and Accelerated Stochastic
        Gradient Descent*, arXiv:1810.00553.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = A2Grad(model.parameters(), beta=10.0, lips=10.0, variant="exp")
        >>> model(torch.ones(1, 3)).sum().backward()
        >>> opt.step()
    """

    _fused_supported = True
    _fused_compiled = True
    _group_fallbacks = {"fused": None, "lr": 1.0, "weight_decay": 0.0}

    def __init__(
        self,
        params: ParamsT,
        beta: float = 10.0,
        lips: float = 10.0,
        rho: float = 0.5,
        variant: str = "uni",
        per_coordinate: bool = True,
        *,
        lr: float | Tensor = 1.0,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        _check_nonnegative("beta", beta)
        _check_lips(lips)
        _check_range("rho", rho, 0.0, 1.0)
        _check_variant(variant)
        if not isinstance(per_coordinate, bool):
            raise ValueError(f"Invalid per_coordinate: {per_coordinate!r} (must be True or False)")
        _check_lr(lr)
        _check_nonnegative("weight_decay", weight_decay)
        if differentiable:
            raise ValueError(
                "Invalid differentiable: True (must be False: differentiating through "
                "the step is not implemented by optimizers.A2Grad)"
            )
        _check_impl_flags("A2Grad", foreach=foreach, fused=fused, fused_supported=True)
        defaults = dict(
            lr=lr,
            beta=beta,
            lips=lips,
            rho=rho,
            variant=variant,
            per_coordinate=per_coordinate,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating the A2Grad hyperparameters it overrides."""
        checks = {
            "beta": lambda v: _check_nonnegative("beta", v),
            "lips": _check_lips,
            "rho": lambda v: _check_range("rho", v, 0.0, 1.0),
            "variant": _check_variant,
            "lr": _check_lr,
            "weight_decay": lambda v: _check_nonnegative("weight_decay", v),
        }
        for key, check in checks.items():
            if key in param_group:
                check(param_group[key])
        super().add_param_group(param_group)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        if group["per_coordinate"]:
            def new_v() -> Tensor:
                return torch.zeros_like(p, memory_format=torch.preserve_format)
        else:
            def new_v() -> Tensor:
                return torch.zeros((), dtype=_real(p).dtype, device=p.device)
        state = {
            "step": _new_step(),
            "grad_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "x": p.detach().clone(memory_format=torch.preserve_format),
            "v": new_v(),
        }
        if group["variant"] == "exp":
            state["v_tilde"] = new_v()
        return state

    def _step_group(self, group: dict[str, Any]) -> None:
        self._check_fused_once(group)
        params, grads, _, _ = self._gather(group)
        if not params:
            return
        states = [self._lazy_state(p, group) for p in params]
        exp = group["variant"] == "exp"
        a2grad(
            params,
            grads,
            [s["grad_avg"] for s in states],
            [s["x"] for s in states],
            [s["v"] for s in states],
            [s["v_tilde"] for s in states] if exp else [],
            [s["step"] for s in states],
            beta=group["beta"],
            lips=group["lips"],
            rho=group["rho"],
            variant=group["variant"],
            per_coordinate=group["per_coordinate"],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=group["foreach"],
            fused=group["fused"],
        )


def _check_lips(lips: Any) -> None:
    x = _real_number("lips", lips)
    if not x > 0.0:
        raise ValueError(
            f"Invalid lips: {lips!r} (must be > 0: the first step is 1/(2*lips) times the gradient)"
        )


def _check_variant(variant: Any) -> None:
    if variant not in VARIANTS:
        raise ValueError(
            f"Invalid variant: {variant!r} (must be one of " + ", ".join(map(repr, VARIANTS)) + ")"
        )


def a2grad(
    params: list[Tensor],
    grads: list[Tensor],
    grad_avgs: list[Tensor],
    xs: list[Tensor],
    vs: list[Tensor],
    v_tildes: list[Tensor],
    steps: list[Tensor],
    *,
    beta: float = 10.0,
    lips: float = 10.0,
    rho: float = 0.5,
    variant: str = "uni",
    per_coordinate: bool = True,
    lr: float | Tensor = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    r"""Functional A2Grad: update ``params`` and the state in place (see :class:`A2Grad`).

    Args:
        params, grads: parallel lists of parameters :math:`y_k` and gradients.
        grad_avgs, xs, vs: :math:`\bar g_{k-1}`, :math:`x_k`, :math:`v_{k-1}`
            (``vs`` 0-dim when not ``per_coordinate``).
        v_tildes: :math:`\tilde v_{k-1}` for ``variant="exp"``; ignored (may be
            empty) otherwise.
        steps: 0-dim step counters (:math:`k`, the steps already taken);
            incremented here.
        foreach: implementation choice, as in :class:`A2Grad`.
    """
    _check_variant(variant)
    impl = _resolve_impl(params, foreach, fused)
    func = {"single": _single_tensor_a2grad, "foreach": _multi_tensor_a2grad, "fused": _fused_a2grad}[impl]
    func(
        params,
        grads,
        grad_avgs,
        xs,
        vs,
        v_tildes,
        steps,
        beta=_as_float(beta),
        lips=_as_float(lips),
        rho=_as_float(rho),
        variant=variant,
        per_coordinate=per_coordinate,
        lr=_as_float(lr),
        weight_decay=_as_float(weight_decay),
        maximize=maximize,
    )


def _coefficients(t: float, *, beta: float, lips: float, rho: float, variant: str,
                  lr: float) -> dict[str, float]:
    """The scalars of step ``k = t - 1`` (``t`` = steps taken, this one included)."""
    k = t - 1.0
    alpha_k = 2.0 / (k + 2.0)  # alpha_k = 2 / (k + 2)
    alpha_next = 2.0 / (k + 3.0)  # alpha_{k+1}
    w = k / (k + 1.0)
    return {
        # With d_k = g_k - g_bar_{k-1}: g_bar_k = g_k - w d_k and delta_k = w d_k, w = k / (k + 1)
        "w": w,
        "w2": w * w,  # delta_k^2 = w^2 d_k^2; also inc's decay k^2 / (k + 1)^2
        "w2_exp": (1.0 - rho) * w * w,  # exp: (1 - rho) delta_k^2
        # h_k = sqrt(v_k), or sqrt((k+1) v_k) for exp: beta * h_k = beta_h * sqrt(v_k)
        "beta_h": beta * _sqrt(k + 1.0) if variant == "exp" else beta,
        "gamma": 2.0 * lips / (k + 1.0),  # gamma_k = 2 L / (k + 1)
        "alpha_next": alpha_next,
        "x_scale": -lr,  # x_{k+1} = x_k - c_k g_k,  c_k = lr / (gamma_k + beta h_k)
        "y_scale": -lr * (1.0 - alpha_next) * alpha_k,  # ... - (1 - alpha_{k+1}) alpha_k c_k g_k
    }


def _global(norm: Tensor) -> Tensor:
    """A norm as a plain tensor: for a sharded DTensor (FSDP2) the norm of the whole
    tensor, reduced across the mesh (``full_tensor``), so that it can update the
    plain 0-dim state ``v`` in place; ``norm`` itself otherwise."""
    return norm.full_tensor() if _is_dtensor(norm) else norm  # type: ignore[attr-defined]  # a DTensor


def _single_tensor_a2grad(
    params: list[Tensor],
    grads: list[Tensor],
    grad_avgs: list[Tensor],
    xs: list[Tensor],
    vs: list[Tensor],
    v_tildes: list[Tensor],
    steps: list[Tensor],
    *,
    beta: float,
    lips: float,
    rho: float,
    variant: str,
    per_coordinate: bool,
    lr: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    for i, y in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        g_bar, x, v, step = grad_avgs[i], xs[i], vs[i], steps[i]
        v_tilde = v_tildes[i] if variant == "exp" else None
        if torch.is_complex(y):
            y, g, g_bar, x = (_real(t) for t in (y, g, g_bar, x))
            if per_coordinate:
                v = _real(v)
                v_tilde = _real(v_tilde) if v_tilde is not None else None
        if weight_decay != 0:
            g = g.add(y, alpha=weight_decay)  # g_k + lambda * y_k

        # (as a list item: Dynamo loses `.add_` on a 0-dim float64 input under
        # torch.compile(dynamic=True), which fused=True compiles with)
        steps[i] += 1
        step = steps[i]
        c = _coefficients(_step_values([step])[0], beta=beta, lips=lips, rho=rho, variant=variant,
                          lr=lr)

        # The running mean and the deviation without a temporary tensor: with
        # d_k = g_k - g_bar_{k-1} and w = k / (k + 1), delta_k = g_k - g_bar_k = w d_k
        # and g_bar_k = g_k - w d_k. g_bar first holds -d_k, then g_bar_k.
        g_bar.sub_(g)  # -d_k
        # element-wise d_k, or the tensor's norm ||d_k||; then delta_k^2 = w^2 d^2
        d = g_bar if per_coordinate else _global(torch.linalg.vector_norm(g_bar))
        if variant == "uni":
            v.addcmul_(d, d, value=c["w2"])  # v_k = v_{k-1} + delta_k^2
        elif variant == "inc":
            v.mul_(c["w2"]).addcmul_(d, d, value=c["w2"])  # v_k = k^2/(k+1)^2 v_{k-1} + delta_k^2
        else:
            v_tilde.mul_(rho).addcmul_(d, d, value=c["w2_exp"])  # type: ignore[union-attr]  # rho v~ + (1 - rho) delta^2
            torch.maximum(v, v_tilde, out=v)  # type: ignore[arg-type]  # v_k = max(v_{k-1}, v~_k)
        g_bar.mul_(c["w"]).add_(g)  # g_bar_k = g_k - w d_k, the mean of g_0..g_k
        denom = v.sqrt().mul_(c["beta_h"]).add_(c["gamma"])  # gamma_k + beta h_k

        x.addcdiv_(g, denom, value=c["x_scale"])  # x_{k+1} = x_k - c_k g_k
        y.lerp_(x, c["alpha_next"])  # (1 - alpha_{k+1}) y_k + alpha_{k+1} x_{k+1}
        y.addcdiv_(g, denom, value=c["y_scale"])  # - (1 - alpha_{k+1}) alpha_k c_k g_k


#: fused=True: the single-tensor update, compiled once and run per tensor in one pass
_fused_a2grad = _compiled_per_tensor(_single_tensor_a2grad)


def _multi_tensor_a2grad(
    params: list[Tensor],
    grads: list[Tensor],
    grad_avgs: list[Tensor],
    xs: list[Tensor],
    vs: list[Tensor],
    v_tildes: list[Tensor],
    steps: list[Tensor],
    *,
    beta: float,
    lips: float,
    rho: float,
    variant: str,
    per_coordinate: bool,
    lr: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    if not params:
        return
    exp = variant == "exp"
    lists = [params, grads, grad_avgs, xs, vs, v_tildes if exp else [], steps]
    buckets = _group_by_device_and_dtype(lists)
    for (y_list, g_list, gbar_list, x_list, v_list, vt_list, step_list), _ in buckets.values():
        y_list, g_list, gbar_list, x_list = list(y_list), list(g_list), list(gbar_list), list(x_list)
        v_list, vt_list = list(v_list), list(vt_list)
        if any(torch.is_complex(p) for p in y_list):
            if per_coordinate:
                _view_as_real_lists(y_list, g_list, gbar_list, x_list, v_list, *([vt_list] if exp else []))
            else:
                _view_as_real_lists(y_list, g_list, gbar_list, x_list)

        g_list = _foreach_l2_grads(y_list, g_list, maximize=maximize, weight_decay=weight_decay)

        _increment_steps(step_list)
        # One set of scalars per distinct step count (usually a single one).
        cache: dict[float, dict[str, float]] = {}
        cs = []
        for t in _step_values(step_list):
            if _compiling():  # t: a traced 0-dim tensor, not a key
                cs.append(_coefficients(t, beta=beta, lips=lips, rho=rho, variant=variant, lr=lr))
                continue
            if t not in cache:
                cache[t] = _coefficients(t, beta=beta, lips=lips, rho=rho, variant=variant, lr=lr)
            cs.append(cache[t])

        def col(key: str) -> list[float]:
            return [c[key] for c in cs]

        # running mean and deviation in place (see the single-tensor code): g_bar <- -d_k
        torch._foreach_sub_(gbar_list, g_list)
        d = gbar_list if per_coordinate else torch._foreach_norm(gbar_list)
        if variant == "uni":
            _foreach_addcmul_scaled_(v_list, d, d, col("w2"))
        elif variant == "inc":
            torch._foreach_mul_(v_list, col("w2"))
            _foreach_addcmul_scaled_(v_list, d, d, col("w2"))
        else:
            torch._foreach_mul_(vt_list, rho)
            _foreach_addcmul_scaled_(vt_list, d, d, col("w2_exp"))
            torch._foreach_maximum_(v_list, vt_list)
        del d
        torch._foreach_mul_(gbar_list, col("w"))
        torch._foreach_add_(gbar_list, g_list)  # g_bar_k = g_k - w d_k
        denom = torch._foreach_sqrt(v_list)
        torch._foreach_mul_(denom, col("beta_h"))
        torch._foreach_add_(denom, col("gamma"))  # gamma_k + beta h_k

        _foreach_addcdiv_scaled_(x_list, g_list, denom, col("x_scale"))  # x_{k+1}
        torch._foreach_lerp_(y_list, x_list, col("alpha_next"))
        _foreach_addcdiv_scaled_(y_list, g_list, denom, col("y_scale"))  # y_{k+1}
