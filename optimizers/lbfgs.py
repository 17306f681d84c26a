r"""L-BFGS: limited-memory quasi-Newton steps, with an optional strong-Wolfe line search.

:class:`LBFGS` is a drop-in replacement for :class:`torch.optim.LBFGS`. Its
pieces are functions that can be used and tested on their own:
:func:`lbfgs_direction` (the two-loop recursion), :func:`strong_wolfe` (the
line search) and :func:`cubic_interpolate` (its step-length model).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, SupportsFloat, TypeVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import OptimizerBase, _check_nonnegative, _real_number
from ._torch_phrases import check_lr

__all__ = ["LBFGS", "lbfgs_direction", "strong_wolfe", "cubic_interpolate"]

# What the closure returns: a loss that float() accepts (a 1-element Tensor or a number).
_FloatLossT = TypeVar("_FloatLossT", bound=SupportsFloat)


class LBFGS(OptimizerBase):
    r"""L-BFGS: Newton-like steps from the last ``history_size`` gradient differences.

    All parameters are treated as one flat vector :math:`\theta` (complex ones
    as pairs of reals). With :math:`g_k = \nabla f(\theta_k)` at iteration
    :math:`k`, the last :math:`m` (``history_size``) pairs
    :math:`s_i = \theta_{i+1} - \theta_i`,
    :math:`y_i = g_{i+1} - g_i` and :math:`\rho_i = 1/(y_i^\top s_i)`, one
    iteration does

    .. math::

        d_k &= -H_k\, g_k \quad\text{(two-loop recursion, below)} \\
        \theta_{k+1} &= \theta_k + t_k\, d_k

    where :math:`H_k` is the BFGS inverse-Hessian approximation built from
    the pairs, starting from :math:`H_k^0 = \gamma_k I` with
    :math:`\gamma_k = s^\top y / y^\top y` of the newest pair. It is never
    formed: :func:`lbfgs_direction` computes :math:`H_k g_k` in
    :math:`O(mn)` with

    .. math::

        q &\leftarrow g_k; \quad
            \text{for } i = k-1, \dots, k-m:\;\;
            a_i = \rho_i\, s_i^\top q, \;\; q \leftarrow q - a_i\, y_i \\
        r &\leftarrow \gamma_k\, q; \quad
            \text{for } i = k-m, \dots, k-1:\;\;
            b = \rho_i\, y_i^\top r, \;\; r \leftarrow r + (a_i - b)\, s_i \\
        H_k g_k &= r.

    The first iteration is a gradient step, :math:`d_0 = -g_0`. A pair enters
    the memory only when :math:`y^\top s > 10^{-10}` (the curvature
    condition that keeps :math:`H` positive definite), the oldest leaving
    when there are :math:`m`.

    **Step length** :math:`t_k`. With ``line_search_fn=None`` it is the fixed
    ``lr`` (:math:`\min(1, 1/\lVert g_0\rVert_1)\cdot` ``lr`` at the very first
    iteration). With ``line_search_fn="strong_wolfe"`` it starts there and
    :func:`strong_wolfe` searches for a :math:`t` with

    .. math::

        f(\theta_k + t d_k) \le f(\theta_k) + c_1\, t\, g_k^\top d_k, \qquad
        \lvert \nabla f(\theta_k + t d_k)^\top d_k \rvert \le c_2\, \lvert g_k^\top d_k\rvert,

    :math:`c_1 = 10^{-4}`, :math:`c_2 = 0.9`, by bracketing and cubic
    interpolation (Nocedal & Wright, Algorithms 3.5 and 3.6); the curvature
    condition guarantees :math:`y^\top s > 0`.

    **One call of** ``step(closure)`` runs up to ``max_iter`` iterations and
    about ``max_eval`` evaluations of the closure (a line search may end one
    evaluation past it), and stops early when
    :math:`\max_j |g_{k,j}| \le` ``tolerance_grad``, when
    :math:`g_k^\top d_k > -`\ ``tolerance_change`` (not a descent direction),
    or when the step :math:`\max_j |t_k d_{k,j}|` or the change of the loss
    falls below ``tolerance_change``. The memory, :math:`d`, :math:`t` and
    the counters persist between calls: calling ``step`` repeatedly continues
    the same run.

    Conventions (those of ``torch.optim.LBFGS``):

    * The closure is required; it must zero the gradients, compute the
      loss, call ``backward()`` and return the loss. It is called at
      least once per ``step``.
    * One parameter group only, no ``maximize`` and no weight decay (put
      them in the closure's loss); sparse gradients are made dense.
    * ``step`` returns the loss of the *first* evaluation (at the starting
      point of the call).
    * The state lives under the first parameter: ``func_evals``, ``n_iter``,
      ``d``, ``t``, ``old_dirs`` (:math:`y_i`), ``old_stps`` (:math:`s_i`),
      ``ro`` (:math:`\rho_i`), ``H_diag`` (:math:`\gamma_k`), ``al``,
      ``prev_flat_grad`` and ``prev_loss``, as in torch.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs); one group.
        lr: step length (or the line search's first trial) :math:`\ge 0`,
            float or 1-element tensor (default: 1).
        max_iter: iterations per ``step``, an int :math:`\ge 1` (default: 20).
        max_eval: closure evaluations per ``step``, an int :math:`\ge 1`
            (default: ``max_iter * 5 // 4``).
        tolerance_grad: stop when the largest gradient entry is at most this, a real
            number, not NaN; a negative value (``-math.inf``) turns this test off, as in
            torch (default: 1e-7).
        tolerance_change: stop when the step or the loss change is below this, :math:`\ge 0` (default: 1e-9).
        history_size: number :math:`m \ge 1` of pairs kept (default: 100).
        line_search_fn: ``None`` or ``"strong_wolfe"`` (default: None).

    References:
        Liu & Nocedal (1989), *On the Limited Memory BFGS Method for Large
        Scale Optimization*, Mathematical Programming 45.
        Nocedal & Wright (2006), *Numerical Optimization*, 2nd ed., Springer,
        Algorithm 7.4 (two-loop recursion) and Section 3.5 (line search).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        check_lr(lr)
        _check_count("max_iter", max_iter)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        _check_count("max_eval", max_eval)
        _real_number("tolerance_grad", tolerance_grad)  # negative: never stop on the gradient
        _check_nonnegative("tolerance_change", tolerance_change)
        _check_count("history_size", history_size)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(
                f"Invalid line_search_fn: {line_search_fn!r} (must be None or 'strong_wolfe') "
                "[torch.optim: only 'strong_wolfe' is supported]"
            )
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # torch's checks on the group come first (a parameter in two groups, names on
        # some groups only raise their own errors, as torch.optim.LBFGS does); a second
        # group that passes them is then refused and removed again.
        super().add_param_group(param_group)
        if len(self.param_groups) > 1:
            self.param_groups.pop()
            raise ValueError(
                "Invalid params: a second parameter group (must be one group: the parameters "
                "form a single vector) [torch.optim: LBFGS doesn't support per-parameter "
                "options (parameter groups)]"
            )

    # -- the flat vector --------------------------------------------------- #
    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _flat_grad(self) -> Tensor:
        """The gradients of all parameters as one real vector (zeros where None)."""
        views = []
        for p in self._params:
            if p.grad is None:
                g = p.new_zeros(p.numel())
            elif p.grad.is_sparse:
                g = p.grad.to_dense().view(-1)
            else:
                g = p.grad.view(-1)
            views.append(torch.view_as_real(g).view(-1) if g.is_complex() else g)
        return torch.cat(views, 0)

    def _add_to_params(self, t: float | Tensor, d: Tensor) -> None:
        """theta <- theta + t * d, with d laid out as :meth:`_flat_grad`."""
        offset = 0
        for p in self._params:
            p = torch.view_as_real(p) if p.is_complex() else p
            p.add_(d[offset : offset + p.numel()].view_as(p), alpha=t)  # type: ignore[arg-type]  # a 0-dim Tensor works
            offset += p.numel()

    def _evaluate_along(
        self, closure: Callable[[], Any], x: list[Tensor], t: float | Tensor, d: Tensor
    ) -> tuple[float, Tensor]:
        """(f(x + t d), grad f(x + t d)) with x the parameters' values, leaving them at x."""
        self._add_to_params(t, d)
        loss = float(closure())
        g = self._flat_grad()
        for p, p0 in zip(self._params, x):
            p.copy_(p0)
        return loss, g

    # -- the step ---------------------------------------------------------- #
    @torch.no_grad()
    def step(self, closure: Callable[[], _FloatLossT]) -> _FloatLossT:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; return the closure's first loss.

        Args:
            closure: re-evaluates the model (zero the gradients, compute the
                loss, ``backward()``) and returns the loss. Required.
        """
        if closure is None:
            raise RuntimeError(
                "LBFGS requires a closure: step(closure) with a closure that zeroes the "
                "gradients, computes the loss, calls backward() and returns the loss"
            )
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = group["lr"]
        lr = lr.squeeze() if isinstance(lr, Tensor) else lr  # torch's _to_scalar
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        g = self._flat_grad()
        if g.abs().max() <= tolerance_grad:  # already optimal
            return orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag = state.get("H_diag")
        prev_g, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            if state["n_iter"] == 1:  # d_0 = -g_0, empty memory
                d = g.neg()
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = g.sub(prev_g)  # y = g_k - g_{k-1}
                s = d.mul(t)  # s = theta_k - theta_{k-1}
                ys = y.dot(s)
                if ys > 1e-10:  # curvature condition: keep the pair
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)  # gamma_k = s^T y / y^T y
                if "al" not in state:
                    state["al"] = [None] * history_size
                d = lbfgs_direction(g, old_dirs, old_stps, ro, H_diag, state["al"])

            if prev_g is None:
                prev_g = g.clone(memory_format=torch.contiguous_format)
            else:
                prev_g.copy_(g)
            prev_loss = loss

            # first trial step length
            t = min(1.0, 1.0 / g.abs().sum()) * lr if state["n_iter"] == 1 else lr  # type: ignore[operator]
            gtd = g.dot(d)  # directional derivative g^T d
            if gtd > -tolerance_change:  # not a descent direction
                break

            ls_func_evals = 0
            if group["line_search_fn"] is not None:
                x0 = [p.clone(memory_format=torch.contiguous_format) for p in self._params]
                loss, g, t, ls_func_evals = strong_wolfe(
                    lambda x, t, d: self._evaluate_along(closure, x, t, d),
                    x0, t, d, loss, g, gtd, max_ls=max_eval - current_evals,
                )
                self._add_to_params(t, d)
                opt_cond = g.abs().max() <= tolerance_grad
            else:
                self._add_to_params(t, d)  # fixed step theta_{k+1} = theta_k + t d_k
                if n_iter != max_iter:  # the last gradient is evaluated by the next call
                    with torch.enable_grad():
                        loss = closure()  # type: ignore[assignment]  # float() next
                    loss = float(loss)  # (outside grad mode: no warning about requires_grad)
                    g = self._flat_grad()
                    opt_cond = g.abs().max() <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if (
                n_iter == max_iter
                or current_evals >= max_eval
                or opt_cond
                or d.mul(t).abs().max() <= tolerance_change  # the step is negligible
                or abs(loss - prev_loss) < tolerance_change  # so is the loss change
            ):
                break

        state.update(
            d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
            prev_flat_grad=prev_g, prev_loss=prev_loss,
        )
        return orig_loss


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an int >= 1)")


# --------------------------------------------------------------------------- #
# Functional pieces                                                            #
# --------------------------------------------------------------------------- #


def lbfgs_direction(
    g: Tensor,
    old_dirs: list[Tensor],
    old_stps: list[Tensor],
    ro: list[Tensor],
    H_diag: float | Tensor,
    al: list[Any] | None = None,
) -> Tensor:
    r"""The quasi-Newton direction :math:`d = -H g` by the two-loop recursion.

    ``old_dirs`` are the :math:`y_i`, ``old_stps`` the :math:`s_i` (oldest
    first), ``ro`` the :math:`\rho_i = 1/y_i^\top s_i` and ``H_diag`` the
    initial scaling :math:`\gamma`. ``al`` (at least ``len(old_dirs)``
    entries) receives the :math:`a_i`; a fresh list is used if None.
    """
    m = len(old_dirs)
    if al is None:
        al = [None] * m
    q = g.neg()
    for i in range(m - 1, -1, -1):  # newest to oldest
        al[i] = old_stps[i].dot(q) * ro[i]  # a_i = rho_i s_i^T q
        q.add_(old_dirs[i], alpha=-al[i])  # q <- q - a_i y_i
    d = r = torch.mul(q, H_diag)  # r = gamma q
    for i in range(m):  # oldest to newest
        b = old_dirs[i].dot(r) * ro[i]  # b = rho_i y_i^T r
        r.add_(old_stps[i], alpha=al[i] - b)  # r <- r + (a_i - b) s_i
    return d


def cubic_interpolate(
    x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any,
    bounds: tuple[Any, Any] | None = None,
) -> Any:
    r"""Minimizer of the cubic with values ``f1, f2`` and slopes ``g1, g2`` at ``x1, x2``.

    Clipped to ``bounds`` (default: the interval between ``x1`` and ``x2``);
    the midpoint of the bounds when the cubic has no minimizer (Nocedal &
    Wright, eq. 3.59).
    """
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if not d2_square >= 0:  # (also for NaN)
        return (lo + hi) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        x_min = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        x_min = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(x_min, lo), hi)


def strong_wolfe(
    obj_func: Callable[[Any, Any, Tensor], tuple[float, Tensor]],
    x: Any,
    t: float | Tensor,
    d: Tensor,
    f: float,
    g: Tensor,
    gtd: Tensor,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, Tensor, float | Tensor, int]:
    r"""A step length along ``d`` satisfying the strong Wolfe conditions.

    ``obj_func(x, t, d)`` returns :math:`(f(x + t d), \nabla f(x + t d))`;
    ``f``, ``g`` and ``gtd`` are the value, gradient and slope
    :math:`g^\top d < 0` at ``x``. Phase one grows ``t`` (by cubic
    extrapolation, at most tenfold) until an interval is known to bracket an
    acceptable step; phase two shrinks the bracket by cubic interpolation,
    keeping trial points at least a tenth of the interval from its ends.
    Returns ``(f_new, g_new, t, evaluations)`` at the best point found, after
    at most ``max_ls`` evaluations.
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = obj_func(x, t, d)
    evals = 1
    gtd_new = g_new.dot(d)

    def too_little_decrease(t: Any, f_new: float) -> bool:  # Armijo fails (False for NaN, as in torch)
        return f_new > f + c1 * t * gtd

    # Phase one: points are (t, f, g, g^T d); find a bracket [prev, new] or an acceptable t.
    prev: tuple[Any, float, Tensor, Any] = (0, f, g, gtd)
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        new = (t, f_new, g_new, gtd_new)
        if too_little_decrease(t, f_new) or (ls_iter > 1 and f_new >= prev[1]):
            bracket = [prev, new]  # the decrease failed: a minimizer lies in between
            break
        if abs(gtd_new) <= -c2 * gtd:  # both conditions hold
            bracket = [new]
            done = True
            break
        if gtd_new >= 0:  # the slope turned: a minimizer lies in between
            bracket = [prev, new]
            break
        # extrapolate: a longer step, between 1.01 t - 0.01 t_prev and 10 t
        t_next = cubic_interpolate(
            prev[0], prev[1], prev[3], t, f_new, gtd_new,
            bounds=(t + 0.01 * (t - prev[0]), t * 10),
        )
        prev, t = new, t_next
        f_new, g_new = obj_func(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:  # out of evaluations: choose between the start and the last trial
        bracket = [(0, f, g, None), (t, f_new, g_new, None)]

    # Phase two ("zoom"): shrink the bracket; low is the end with the lower f.
    insufficient_progress = False
    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    while not done and ls_iter < max_ls:
        (t_a, f_a, _, gtd_a), (t_b, f_b, _, gtd_b) = bracket
        if abs(t_b - t_a) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(t_a, f_a, gtd_a, t_b, f_b, gtd_b)
        # keep t at least a tenth of the interval from its ends
        t_max, t_min = max(t_a, t_b), min(t_a, t_b)
        margin = 0.1 * (t_max - t_min)
        if min(t_max - t, t - t_min) < margin:
            if insufficient_progress or t >= t_max or t <= t_min:
                t = t_max - margin if abs(t - t_max) < abs(t - t_min) else t_min + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False

        f_new, g_new = obj_func(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        new = (t, f_new, g_new, gtd_new)

        if too_little_decrease(t, f_new) or f_new >= bracket[low][1]:
            bracket[high] = new  # the new point replaces the high end
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]  # keep the minimizer inside the bracket
            bracket[low] = new

    t, f_new, g_new, _ = bracket[low]
    return f_new, g_new, t, evals
