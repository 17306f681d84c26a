r"""Shampoo: Kronecker-factored full-matrix AdaGrad for matrix-shaped parameters.

:class:`Shampoo` is the optimizer and :func:`shampoo` its functional core;
:func:`inverse_root` is the eigendecomposition-based matrix root both use.
``torch.optim`` has no Shampoo.
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
    _check_lr,
    _check_nonnegative,
    _check_range,
    _compiling,
    _foreach_add_scaled_,
    _increment_steps,
    _new_step,
    _resolve_impl,
)
from .lm_adagrad import _check_no_dtensor

__all__ = ["Shampoo", "shampoo", "inverse_root", "matrix_shape"]

_GRAFTINGS = (None, "sgd", "adagrad")


class Shampoo(OptimizerBase):
    r"""Shampoo: precondition a weight matrix from the left and from the right.

    For a parameter :math:`W_t` of shape :math:`m \times n` with gradient
    :math:`G_t = \pm\nabla f(W_t)` (minus sign if ``maximize``), :math:`\epsilon`
    ``eps``, :math:`\eta` ``lr``, :math:`\lambda` ``weight_decay`` and
    :math:`f` ``precondition_frequency``, step :math:`t = 1, 2, \dots` does

    .. math::

        L_t &= L_{t-1} + G_t G_t^\top, \quad L_0 = \epsilon I_m \\
        R_t &= R_{t-1} + G_t^\top G_t, \quad R_0 = \epsilon I_n \\
        D_t &= L_{s}^{-1/4}\, G_t\, R_{s}^{-1/4}, \quad
              s = \text{the last step with } (s - 1) \bmod f = 0 \\
        W_{t+1} &= (1 - \eta\lambda) W_t - \eta\, B_t, \qquad
              B_t = \beta B_{t-1} + \tilde D_t

    with :math:`\tilde D_t = D_t` (``grafting=None``) or :math:`D_t` rescaled to
    the Frobenius norm of another method's step (Agarwal et al.'s *grafting*:
    Shampoo gives the direction, the other method the size):
    ``"sgd"``: :math:`\|G_t\|_F`; ``"adagrad"``: :math:`\|G_t / \sqrt{A_t}\|_F`
    with the diagonal :math:`A_t = A_{t-1} + G_t \odot G_t`, :math:`A_0 = \epsilon`.
    On vectorised parameters (row-major :math:`\mathrm{vec}`) the step is
    :math:`(L^{-1/4} \otimes R^{-1/4})\,\mathrm{vec}(G_t)`: full-matrix
    AdaGrad's :math:`(\sum_s g_s g_s^\top)^{-1/2}` with the :math:`mn \times mn`
    matrix replaced by a Kronecker product of an :math:`m\times m` and an
    :math:`n\times n` factor (memory :math:`m^2 + n^2` instead of :math:`m^2n^2`).

    Conventions:

    * The roots :math:`L^{-1/4}, R^{-1/4}` come from an eigendecomposition
      (``torch.linalg.eigh``) in the statistics' dtype, recomputed at steps
      :math:`1, 1+f, 1+2f, \dots` and reused in between (the statistics
      themselves are accumulated every step). Eigenvalues are clamped below
      at :math:`\epsilon` (a no-op in exact arithmetic, where
      :math:`L_t \succeq \epsilon I`) so that round-off cannot blow up the root.
    * The statistics are kept in float32 for float16/bfloat16 parameters
      (their sums of squares overflow or lose :math:`\epsilon` otherwise), in
      the parameter's dtype otherwise.
    * A parameter with more than 2 dimensions (a convolution kernel) is
      treated as the matrix ``p.reshape(p.shape[0], -1)``. A parameter with
      fewer (biases, gains, scalars) gets the rule Shampoo gives an order-1
      tensor, :math:`D_t = G_t\,/\sqrt{A_t}` with the diagonal :math:`A_t` above
      (diagonal AdaGrad whose accumulator starts at :math:`\epsilon`), and no
      grafting.
    * Weight decay is decoupled (as in AdamW and Muon), momentum (default 0:
      the paper's algorithm) is heavy ball on the grafted direction.
    * DTensor parameters (FSDP2) are refused at construction with a
      ``TypeError``: :math:`L` needs every row of :math:`G` and :math:`R` every
      column, which no shard holds.
    * Complex parameters and sparse gradients are refused at the first step.

    State per parameter: ``step``; for matrices ``L``, ``R``, ``L_inv_root``,
    ``R_inv_root`` (and ``graft_sum`` with ``grafting="adagrad"``); for
    vectors ``sum``; ``momentum_buffer`` when ``momentum > 0``.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-2).
        eps: :math:`\epsilon > 0`, the statistics' starting value (default: 1e-6).
        momentum: :math:`\beta \in [0, 1)` (default: 0).
        weight_decay: decoupled weight decay :math:`\lambda \ge 0` (default: 0).
        precondition_frequency: :math:`f \ge 1`, steps between root
            computations (default: 1).
        grafting: ``None``, ``"sgd"`` or ``"adagrad"`` (default: None).
        maximize: maximize the objective instead of minimizing (default: False).
        foreach: ``None`` (single-tensor loop on CPU, torch's rule) or a bool:
            the multi-tensor path applies momentum and the update with
            ``torch._foreach_*`` calls; the matrix roots are per tensor either way.

    References:
        Gupta, Koren & Singer (2018), *Shampoo: Preconditioned Stochastic
        Tensor Optimization*, ICML 2018.
        Agarwal, Anil, Hazan, Koren & Zhang (2020), *Disentangling Adaptive
        Gradient Methods from Learning Rates*, arXiv:2002.11803.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        eps: float = 1e-6,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        precondition_frequency: int = 1,
        grafting: str | None = None,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr(lr)
        _check_nonnegative("eps", eps)
        if not eps > 0:
            raise ValueError(f"Invalid eps: {eps!r} (must be > 0: L_0 = eps I must be invertible)")
        _check_range("momentum", momentum, 0.0, 1.0, hi_closed=False)
        _check_nonnegative("weight_decay", weight_decay)
        _check_frequency(precondition_frequency)
        if grafting not in _GRAFTINGS:
            raise ValueError(f"Invalid grafting: {grafting!r} (must be None, 'sgd' or 'adagrad')")
        _check_impl_flags("Shampoo", foreach=foreach)
        defaults = dict(
            lr=lr,
            eps=eps,
            momentum=momentum,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            grafting=grafting,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _check_new_group(self, index: int, group: dict[str, Any]) -> None:
        """Refuse DTensors (``TypeError``)."""
        _check_no_dtensor(type(self).__name__, index, group["params"],
                          "the left and right statistics need whole rows and columns of the gradient")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return init_state(p, group["eps"], group["momentum"], group["grafting"])

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads = _gather_real_dense(self, group, "Shampoo")
        states = [self._lazy_state(p, group) for p in params]
        shampoo(
            params,
            grads,
            states,
            lr=group["lr"],
            eps=group["eps"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            precondition_frequency=group["precondition_frequency"],
            grafting=group["grafting"],
            maximize=group["maximize"],
            foreach=group["foreach"],
        )


def _check_frequency(value: Any, name: str = "precondition_frequency") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 1)")


def _gather_real_dense(opt: OptimizerBase, group: dict[str, Any], name: str) -> tuple[list, list]:
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if torch.is_complex(p):
            raise RuntimeError(f"{name} does not support complex parameters")
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        params.append(p)
        grads.append(p.grad)
    return params, grads


def matrix_shape(p: Tensor) -> tuple[int, int] | None:
    """The (m, n) a parameter is preconditioned as, or None for a vector or scalar."""
    if p.ndim < 2:
        return None
    return p.shape[0], p.numel() // p.shape[0]


def stats_dtype(p: Tensor) -> torch.dtype:
    """float32 for 16-bit parameters, the parameter's dtype otherwise."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def init_state(p: Tensor, eps: float, momentum: float, grafting: str | None) -> dict[str, Any]:
    shape, dt = matrix_shape(p), stats_dtype(p)
    state: dict[str, Any] = {"step": _new_step()}
    if shape is None:
        state["sum"] = torch.full_like(p, eps, dtype=dt, memory_format=torch.preserve_format)
    else:
        m, n = shape
        kw: dict[str, Any] = dict(dtype=dt, device=p.device)
        state["L"] = eps * torch.eye(m, **kw)
        state["R"] = eps * torch.eye(n, **kw)
        state["L_inv_root"] = torch.eye(m, **kw)
        state["R_inv_root"] = torch.eye(n, **kw)
        if grafting == "adagrad":
            state["graft_sum"] = torch.full((m, n), eps, **kw)
    if momentum > 0:
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def inverse_root(S: Tensor, p: int, floor: float) -> Tensor:
    r""":math:`S^{-1/p}` of a symmetric positive definite ``S`` by ``torch.linalg.eigh``,
    with the eigenvalues clamped below at ``floor``."""
    w, Q = torch.linalg.eigh(S)
    return (Q * w.clamp(min=floor).pow(-1.0 / p)) @ Q.T


def _graft(D: Tensor, target_norm: Tensor) -> Tensor:
    """``D`` rescaled to Frobenius norm ``target_norm`` (left at 0 if it is 0)."""
    norm = torch.linalg.vector_norm(D)
    return D * torch.where(norm > 0, target_norm / norm, torch.zeros_like(norm))


def shampoo_direction(G: Tensor, state: dict[str, Any], *, eps: float, precondition_frequency: int,
                      grafting: str | None) -> Tensor:
    """Update the statistics in ``state`` with the gradient ``G`` and return :math:`\\tilde D_t`
    (in the statistics' dtype, shaped as ``G``). ``state["step"]`` must already count this step."""
    shape = matrix_shape(G)
    dt = stats_dtype(G)
    g = G.to(dt)
    if shape is None:
        A = state["sum"]
        A.addcmul_(g, g)  # A_t = A_{t-1} + g * g
        return g / A.sqrt()
    G2 = g.reshape(shape)
    L, R = state["L"], state["R"]
    L.addmm_(G2, G2.T)  # L_t = L_{t-1} + G G^T
    R.addmm_(G2.T, G2)  # R_t = R_{t-1} + G^T G
    if _compiling():
        # no host read of the counter: the refresh is a torch.cond on it, one graph for both
        # cases (the kept roots come back as copies: torch.cond's branches return new tensors)
        due = (state["step"] - 1) % precondition_frequency == 0
        roots = torch.cond(
            due,
            lambda L_, R_, Li, Ri: (inverse_root(L_, 4, eps), inverse_root(R_, 4, eps)),
            lambda L_, R_, Li, Ri: (Li.clone(), Ri.clone()),
            (L, R, state["L_inv_root"], state["R_inv_root"]),
        )
        state["L_inv_root"].copy_(roots[0])
        state["R_inv_root"].copy_(roots[1])
    elif (int(state["step"].item()) - 1) % precondition_frequency == 0:
        state["L_inv_root"].copy_(inverse_root(L, 4, eps))
        state["R_inv_root"].copy_(inverse_root(R, 4, eps))
    D = state["L_inv_root"] @ G2 @ state["R_inv_root"]  # L^{-1/4} G R^{-1/4}
    if grafting == "sgd":
        D = _graft(D, torch.linalg.vector_norm(G2))
    elif grafting == "adagrad":
        A = state["graft_sum"]
        A.addcmul_(G2, G2)
        D = _graft(D, torch.linalg.vector_norm(G2 / A.sqrt()))
    return D.reshape(G.shape)


def shampoo(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float | Tensor,
    eps: float,
    momentum: float,
    weight_decay: float,
    precondition_frequency: int,
    grafting: str | None,
    maximize: bool = False,
    foreach: bool | None = None,
) -> None:
    """Functional Shampoo: update ``params`` and their ``states`` (from :func:`init_state`) in place."""
    impl = _resolve_impl(params, foreach)
    func = _multi_tensor_shampoo if impl == "foreach" else _single_tensor_shampoo
    func(params, grads, states, lr=_as_float(lr), eps=eps, momentum=momentum, weight_decay=weight_decay,
         precondition_frequency=precondition_frequency, grafting=grafting, maximize=maximize)


def _single_tensor_shampoo(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], *, lr: float, eps: float,
    momentum: float, weight_decay: float, precondition_frequency: int, grafting: str | None,
    maximize: bool,
) -> None:
    for W, G, state in zip(params, grads, states):
        if maximize:
            G = -G
        state["step"] += 1
        D = shampoo_direction(G, state, eps=eps, precondition_frequency=precondition_frequency,
                              grafting=grafting).to(W.dtype)
        if momentum > 0:
            D = state["momentum_buffer"].mul_(momentum).add_(D)  # B_t = beta B_{t-1} + D_t
        if weight_decay != 0:
            W.mul_(1 - lr * weight_decay)
        if _compiling():
            # inductor (torch 2.13, CPU) fuses add_(A @ B, alpha=c) into a matrix product that
            # drops c: the product is scaled first (checked against eager in tests/test_compile.py)
            W.add_(D * -lr)
        else:
            W.add_(D, alpha=-lr)


def _multi_tensor_shampoo(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], *, lr: float, eps: float,
    momentum: float, weight_decay: float, precondition_frequency: int, grafting: str | None,
    maximize: bool,
) -> None:
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads)  # type: ignore[assignment]  # a list (stubs: tuple)
    _increment_steps([s["step"] for s in states])
    directions = [
        shampoo_direction(G, s, eps=eps, precondition_frequency=precondition_frequency,
                          grafting=grafting).to(W.dtype)
        for W, G, s in zip(params, grads, states)
    ]
    if momentum > 0:
        bufs = [s["momentum_buffer"] for s in states]
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, directions)
        directions = bufs
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    _foreach_add_scaled_(params, directions, -lr)
