r"""SparseAdam: lazy Adam for sparse gradients (embedding tables).

:class:`SparseAdam` is a drop-in replacement for :class:`torch.optim.SparseAdam`;
:func:`sparse_adam` is its functional core.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import OptimizerBase, _real_number
from ._torch_phrases import check_betas, check_lr, torch_phrase

__all__ = ["SparseAdam", "sparse_adam"]


class SparseAdam(OptimizerBase):
    r"""SparseAdam: Adam that updates only the rows a sparse gradient touches ("lazy Adam").

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0,
    1, \dots`), :math:`g_t = \pm\nabla f_t(\theta_t)` a sparse gradient
    (minus sign if ``maximize``) whose nonzero entries sit at the index set
    :math:`I_t` (e.g. the rows of an embedding table that the batch looked
    up), :math:`\eta` ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` ``eps`` and :math:`n` the ``step`` counter after this
    step (the number of steps this parameter has had a gradient in:
    :math:`t + 1` if it had one at every step), the step from
    :math:`\theta_t` does, for :math:`i \in I_t` only,

    .. math::

        m_{t+1}[i] &= \beta_1 m_t[i] + (1-\beta_1)\, g_t[i] \\
        v_{t+1}[i] &= \beta_2 v_t[i] + (1-\beta_2)\, g_t[i]^2 \\
        \theta_{t+1}[i] &= \theta_t[i] - \eta\, \frac{\sqrt{1-\beta_2^{n}}}{1-\beta_1^{n}}\,
            \frac{m_{t+1}[i]}{\sqrt{v_{t+1}[i]} + \epsilon}

    while every :math:`i \notin I_t` keeps :math:`\theta`, :math:`m` and
    :math:`v` unchanged, with :math:`m_0 = v_0 = 0`.

    This is **not** Adam on a gradient that happens to be sparse: dense Adam
    would decay the moments of every row (zero gradient is still a gradient)
    and keep moving rows with a nonzero :math:`m`. Lazy Adam touches
    :math:`|I_t|` rows per step instead of the whole table, which is the
    point for large embeddings. The bias corrections use the *parameter's*
    step count :math:`n`, not a per-row count: a row first seen late
    (:math:`n \gg 1/(1-\beta_2)`) gets almost no correction, so its first
    update is about
    :math:`\eta(1-\beta_1)/\sqrt{1-\beta_2}` per coordinate (3.16
    :math:`\eta` with the default betas) where Adam's first step is
    :math:`\eta`.

    Conventions (those of ``torch.optim.SparseAdam``):

    * :math:`\epsilon` is added to the *uncorrected* :math:`\sqrt{v_t}` and
      the bias corrections are folded into the step size (the form at the
      end of Kingma & Ba's Section 2), unlike ``Adam``, which adds
      :math:`\epsilon` after correcting.
    * Duplicate indices in :math:`g_t` are summed first (``coalesce``); a
      gradient with no entries still counts as a step (:math:`n` grows).
    * Gradients must be sparse (a dense one is refused: use ``Adam``), and
      parameters dense and real. No weight decay (it would touch every row).
    * ``step`` is a Python int in the state, as in torch.

    State per parameter: ``step`` (:math:`n`, an int), ``exp_avg``
    (:math:`m_t`) and ``exp_avg_sq`` (:math:`v_t`), dense like the parameter.

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta > 0`, float or 1-element tensor (default: 1e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)` (default: (0.9, 0.999)).
        eps: :math:`\epsilon > 0` (default: 1e-8).
        maximize: maximize the objective instead of minimizing (default: False).

    References:
        Kingma & Ba (2015), *Adam: A Method for Stochastic Optimization*, ICLR.
    """

    _supports_sparse = True

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        with torch_phrase(f"Invalid learning rate: {lr}"):
            if not _real_number("lr", lr) > 0:
                raise ValueError(f"Invalid lr: {lr!r} (must be > 0)")
        with torch_phrase(f"Invalid epsilon value: {eps}"):
            if not _real_number("eps", eps) > 0:
                raise ValueError(f"Invalid eps: {eps!r} (must be > 0)")
        betas = check_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults)
        for kind, bad, reason in (
            ("sparse", lambda p: p.is_sparse, "requires dense parameter tensors"),
            ("complex", lambda p: p.is_complex(), "does not support complex parameters"),
        ):
            where = [
                [gi, pi]
                for gi, group in enumerate(self.param_groups)
                for pi, p in enumerate(group["params"])
                if bad(p)
            ]
            if where:
                raise ValueError(
                    f"Invalid params: {kind} tensors at (group, index) {where} (must be dense and "
                    f"real) [torch.optim: {kind.capitalize()} params at indices {where}: "
                    f"SparseAdam {reason}]"
                )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # torch.optim.SparseAdam keeps ``step`` a Python int: keep state dicts identical
        for p_state in self.state.values():
            if torch.is_tensor(p_state.get("step")):
                p_state["step"] = int(p_state["step"].item())

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": 0,
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads, _, _ = self._gather(group, detect_complex=False)
        for g in grads:
            if not g.is_sparse:
                raise RuntimeError(
                    "SparseAdam does not support dense gradients, please consider Adam instead"
                )
        states = [self._lazy_state(p, group) for p in params]
        for s in states:
            s["step"] += 1
        beta1, beta2 = group["betas"]
        sparse_adam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            maximize=group["maximize"],
        )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def sparse_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[int],
    *,
    lr: float | Tensor = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    maximize: bool = False,
) -> None:
    r"""Functional SparseAdam: update ``params`` and the moments in place, on the
    rows present in each sparse gradient.

    ``exp_avgs`` (:math:`m`) and ``exp_avg_sqs`` (:math:`v`) are dense;
    ``state_steps`` are the step counts :math:`n` *after* this step (Python
    ints, already incremented, as torch's functional takes them). There is
    only this single-tensor path: sparse tensors have no foreach kernels, and
    torch.optim.SparseAdam has none either. See :class:`SparseAdam`.
    """
    _single_tensor_sparse_adam(
        params, grads, exp_avgs, exp_avg_sqs, state_steps,
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, maximize=maximize,
    )


def _single_tensor_sparse_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[int],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    maximize: bool,
) -> None:
    # A tensor lr stays a tensor: the step size then rounds as in torch.optim.
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        g = g.coalesce()  # the update is not linear in g: sum duplicate indices first
        g_values = g._values()
        if g_values.numel() == 0:
            continue
        m, v, n = exp_avgs[i], exp_avg_sqs[i], state_steps[i]

        def on_rows(values: Tensor) -> Tensor:
            """A sparse tensor with g's indices (valid: they come from g) and these values."""
            return torch.sparse_coo_tensor(g._indices(), values, g.size(), check_invariants=False)

        m_old = m.sparse_mask(g)._values()
        dm = g_values.sub(m_old).mul_(1 - beta1)  # m_{t+1} - m_t = (1 - beta1)(g_t - m_t) on I_t
        m.add_(on_rows(dm))
        v_old = v.sparse_mask(g)._values()
        dv = g_values.pow(2).sub_(v_old).mul_(1 - beta2)  # v_{t+1} - v_t on I_t
        v.add_(on_rows(dv))

        m_new = dm.add_(m_old)
        denom = dv.add_(v_old).sqrt_().add_(eps)  # sqrt(v_{t+1}) + eps on I_t
        step_size = lr * math.sqrt(1 - beta2**n) / (1 - beta1**n)
        theta.add_(on_rows(-step_size * m_new.div_(denom)))
