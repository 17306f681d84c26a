r"""SOAP: Adam run in the eigenbasis of Shampoo's statistics.

:class:`SOAP` is the optimizer and :func:`soap` its functional core.
``torch.optim`` has no SOAP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    OptimizerBase,
    _as_float,
    _check_betas,
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
from .shampoo import _check_frequency, _gather_real_dense, matrix_shape, stats_dtype
from .lm_adagrad import _check_no_dtensor

__all__ = ["SOAP", "soap"]


class SOAP(OptimizerBase):
    r"""SOAP: Adam in a rotated frame, the rotation being Shampoo's eigenbasis.

    For a parameter :math:`W_t` of shape :math:`m \times n` with gradient
    :math:`G_t = \pm\nabla f(W_t)` (minus sign if ``maximize``), betas
    :math:`(\beta_1, \beta_2)`, :math:`\beta_s` ``shampoo_beta``,
    :math:`f` ``precondition_frequency``: step 1 only initialises the
    statistics :math:`L_1 = (1-\beta_s) G_1 G_1^\top`, :math:`R_1 = (1-\beta_s)
    G_1^\top G_1` and the basis :math:`Q_L, Q_R` (their eigenvectors); nothing
    moves. Step :math:`t = 2, 3, \dots`, with :math:`k = t - 1` the number of
    gradients the moments have seen, does

    .. math::

        M_k &= \beta_1 M_{k-1} + (1-\beta_1) G_t, \qquad
        V_k = \beta_2 V_{k-1} + (1-\beta_2) (Q_L^\top G_t Q_R)^{\odot 2} \\
        N_t &= Q_L \left[\frac{Q_L^\top M_k Q_R / (1-\beta_1^k)}
               {\sqrt{V_k / (1-\beta_2^k)} + \epsilon}\right] Q_R^\top \\
        W_{t+1} &= (1 - \eta\lambda) W_t - \eta N_t \\
        L_t &= \beta_s L_{t-1} + (1-\beta_s)\, G_t G_t^\top, \quad
        R_t = \beta_s R_{t-1} + (1-\beta_s)\, G_t^\top G_t \\
        Q_L, Q_R &\leftarrow \text{eigenvectors of } L_t, R_t
              \quad \text{when } (t - 1) \bmod f = 0 \text{ (kept otherwise)}

    This is Vyas et al.'s Algorithm 3: the first moment lives in the
    parameter's coordinates and is rotated at every step, the second moment
    lives in the rotated coordinates, and the basis used at step :math:`t`
    never contains the current gradient (a basis built from :math:`G_t` makes
    :math:`Q_L^\top G_t Q_R` diagonal: Adam's second moment is then near zero
    in the other coordinates, whose first moment, rotated from older
    gradients, is not, and the step explodes). With :math:`Q_L = Q_R = I`
    it is AdamW; with the rotation fixed it is AdamW on the reparametrised
    weight :math:`Q_L^\top W Q_R`. Shampoo with exponent :math:`-1/2` and
    :math:`\beta_s = \beta_2` would scale the same rotated coordinates by the
    Kronecker product of the eigenvalues; Adam instead keeps a running second
    moment per rotated coordinate (Vyas et al.'s argument for stability).

    Conventions (and where they differ from the authors' code and from
    heavyball's ``SOAP``):

    * The eigenvectors come from ``torch.linalg.eigh`` of the statistics (the
      paper's *Eigenvectors*; the authors' code and heavyball refresh them
      with one power iteration and a QR decomposition, warm-started from the
      previous basis; the authors' code also re-sorts :math:`V` by the
      estimated eigenvalues, heavyball keeps each column in place).
      Within an eigenvalue of multiplicity > 1 the eigenvectors are not
      unique, and Adam's per-coordinate second moment is not invariant to
      which basis of that eigenspace is used. Such eigenvalues are the rule
      early on: after :math:`t` steps the rank of a statistic is at most the
      sum of the gradients' ranks, so the zero eigenvalue of :math:`L` or
      :math:`R` is repeated while that rank is below the side minus one
      (after step 1 whenever :math:`|m - n| \ge 2`). ``eigh``'s basis of such an eigenspace is set
      by round-off, which made the trajectory a discontinuous function of the
      gradient: on a 6-5-3-1 network in float64, a last-bit change of the
      gradient (the batch mean summed in another order) moved the weights by
      3e-4 to 1.5e-2 after four steps, against 3e-2 to 6e-2 in all. Hence a
      deterministic convention, still an eigenbasis of the statistics: the
      eigenvalues are grouped into clusters (consecutive gaps at most
      :math:`16\, n\, \epsilon_{\text{mach}} \max|\lambda|`), and inside a
      cluster the basis is the one that diagonalises
      :math:`Q^{\text{old}} \operatorname{diag}(1, \dots, n) Q^{\text{old}\top}`
      restricted to it (:math:`Q^{\text{old}}` the basis being replaced, the
      identity at step 1: the new directions line up with the old columns
      in order); each column's largest entry is made positive. The same
      perturbation then moves the weights by about 1e-16. Eigenvalues that
      are close but farther apart than the cluster tolerance still leave the
      basis ill-conditioned, as for any eigenvector computation.
    * As in the authors' code, step 1 moves nothing (vectors included, so
      that all parameters keep one step count).
    * Bias corrections and :math:`\epsilon` as in ``torch.optim.Adam``
      (:math:`\epsilon` outside the corrected root); weight decay decoupled
      and applied before the step, as ``torch.optim.AdamW`` and heavyball (the
      authors' code applies it after the step).
    * ``shampoo_beta=None`` means :math:`\beta_s = \beta_2` (the authors'
      default when it is negative; heavyball's default is 0.95).
    * A side longer than ``max_precond_dim`` is not rotated (its :math:`Q` is
      the identity and no statistic is kept for it), as in the authors' code.
      Parameters with fewer than 2 dimensions get AdamW (the authors'
      ``precondition_1d=False``); with more than 2 they are treated as the
      matrix ``p.reshape(p.shape[0], -1)`` (the authors' code can also
      rotate every dimension of a tensor; not done here).
    * The statistics and bases are kept in float32 for 16-bit parameters.
    * DTensor parameters (FSDP2) are refused at construction with a
      ``TypeError`` (the statistics need whole rows and columns of
      :math:`G`); complex parameters and sparse gradients at the first step.

    Compared with heavyball (``heavyball.SOAP`` 3.2.1; ``tests/test_soap_heavyball.py``):
    given the same betas, ``shampoo_beta``, ``eps``, ``weight_decay``,
    ``precondition_frequency`` and ``max_precond_dim`` (its defaults differ:
    betas (0.9, 0.95), :math:`\beta_s = 0.95`, :math:`f = 2`, 2048),
    ``storage_dtype="float64"`` for float64 parameters (it keeps the moments
    in float32 by default) and its defaults ``precondition_1d=False``,
    ``merge_dims=True`` (the same matrix for a tensor whose trailing
    dimensions multiply to at most ``max_precond_dim``), no caution, MARS,
    PaLM schedule of :math:`\beta_2`, warmup or clipping, it runs this
    algorithm (step 1 builds the basis and moves nothing; its statistics are
    bias-corrected averages, a multiple of :math:`L_t, R_t` with the same
    eigenvectors; its first moment is kept rotated and is re-rotated into each
    new basis, the same :math:`M`) up to four conventions: (a) the refresh is
    one power iteration and a QR decomposition from the previous basis, not
    ``eigh`` (its first basis is ``eigh``'s, with eigh's round-off basis
    inside a repeated eigenvalue); (b) it refreshes when a running
    floating-point sum of :math:`1/f` crosses an integer, after steps
    :math:`f, 2f, \dots` counting the basis-building step, and a step late
    where the sum falls short (after steps 3, 7, 9, 12, 16 for :math:`f = 3`;
    11, 20, 30, 40, 51 for :math:`f = 10`), not after steps :math:`1 + f,
    1 + 2f, \dots`; (c) it divides by :math:`\max(\sqrt{\hat V}, \epsilon)`,
    not :math:`\sqrt{\hat V} + \epsilon`; (d) it computes the learning rate
    and the bias correction of :math:`\beta_s` from an int64 step counter,
    in torch's default dtype (float32 unless changed) even for float64
    parameters. With the same eigensolver and schedule, :math:`\epsilon = 0`
    and float64 as the default dtype, the two trajectories agree to
    round-off (within 1e-11 of the weights' scale over 13 steps, with
    repeated eigenvalues, a 3-D weight and an unrotated side); unchanged,
    they agree until heavyball's first refresh (to round-off with
    :math:`\epsilon = 0`, otherwise up to (c)) and part afterwards by far
    more than round-off (an example in the book's chapter on matrix
    preconditioners).

    State per parameter: ``step``, ``exp_avg`` (:math:`M`), ``exp_avg_sq``
    (:math:`V`, shape ``(m, n)``), and for each rotated side ``L``/``Q_L``,
    ``R``/``Q_R``.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 3e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in ``[0, 1)`` (default: (0.95, 0.95)).
        shampoo_beta: :math:`\beta_s \in [0, 1)`, or None for :math:`\beta_2` (default: None).
        eps: :math:`\epsilon \ge 0` (default: 1e-8).
        weight_decay: decoupled weight decay :math:`\lambda \ge 0` (default: 0.01).
        precondition_frequency: :math:`f \ge 1` (default: 10).
        max_precond_dim: longest side that is rotated (default: 10000).
        maximize: maximize the objective instead of minimizing (default: False).
        foreach: ``None`` (single-tensor loop on CPU, torch's rule) or a bool:
            the multi-tensor path applies weight decay and the update with
            ``torch._foreach_*`` calls; the rotations are per tensor either way.

    References:
        Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade
        (2024), *SOAP: Improving and Stabilizing Shampoo using Adam*,
        arXiv:2409.11321.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _check_lr(lr)
        betas = _check_betas(betas)
        if shampoo_beta is not None:
            _check_range("shampoo_beta", shampoo_beta, 0.0, 1.0, hi_closed=False)
        _check_nonnegative("eps", eps)
        _check_nonnegative("weight_decay", weight_decay)
        _check_frequency(precondition_frequency)
        _check_frequency(max_precond_dim, "max_precond_dim")
        _check_impl_flags("SOAP", foreach=foreach)
        defaults = dict(
            lr=lr,
            betas=betas,
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _check_new_group(self, index: int, group: dict[str, Any]) -> None:
        """Refuse DTensors (``TypeError``)."""
        _check_no_dtensor(type(self).__name__, index, group["params"],
                          "the left and right statistics need whole rows and columns of the gradient")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return init_state(p, group["max_precond_dim"])

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads = _gather_real_dense(self, group, "SOAP")
        states = [self._lazy_state(p, group) for p in params]
        soap(
            params,
            grads,
            states,
            lr=group["lr"],
            betas=group["betas"],
            shampoo_beta=group["shampoo_beta"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            precondition_frequency=group["precondition_frequency"],
            maximize=group["maximize"],
            foreach=group["foreach"],
        )


def init_state(p: Tensor, max_precond_dim: int) -> dict[str, Any]:
    shape, dt = matrix_shape(p), stats_dtype(p)
    state: dict[str, Any] = {
        "step": _new_step(),
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
    }
    if shape is None:
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
    m, n = shape
    kw: dict[str, Any] = dict(dtype=dt, device=p.device)
    state["exp_avg_sq"] = torch.zeros(m, n, **kw)
    if m <= max_precond_dim:
        state["L"], state["Q_L"] = torch.zeros(m, m, **kw), torch.eye(m, **kw)
    if n <= max_precond_dim:
        state["R"], state["Q_R"] = torch.zeros(n, n, **kw), torch.eye(n, **kw)
    return state


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def _rotate(X: Tensor, state: dict[str, Any], back: bool = False) -> Tensor:
    """``Q_L^T X Q_R`` (or ``Q_L X Q_R^T`` with ``back``), skipping a side without a basis."""
    QL, QR = state.get("Q_L"), state.get("Q_R")
    if QL is not None:
        X = (QL if back else QL.T) @ X
    if QR is not None:
        X = X @ (QR.T if back else QR)
    return X


def soap_direction(G: Tensor, state: dict[str, Any], *, beta1: float, beta2: float, shampoo_beta: float,
                   eps: float, precondition_frequency: int) -> Tensor | None:
    """Update ``state`` with the gradient ``G`` and return :math:`N_t` (shaped and typed as ``G``),
    or None at step 1 (which only initialises the basis). ``state["step"]`` must already count
    this step. While compiling, see :func:`_soap_direction_traced`."""
    if _compiling():
        return _soap_direction_traced(G, state, beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta,
                                      eps=eps, precondition_frequency=precondition_frequency)
    t = int(state["step"].item())
    shape = matrix_shape(G)
    if t == 1:  # the first gradient only initialises the statistics and the basis
        if shape is not None:
            _update_statistics(G, state, shape, shampoo_beta, refresh=True)
        return None
    k = t - 1  # gradients the moments have seen
    bc1, bc2_sqrt = 1 - beta1**k, (1 - beta2**k) ** 0.5
    M, V = state["exp_avg"], state["exp_avg_sq"]
    M.lerp_(G, 1 - beta1)  # M_k, in the parameter's coordinates
    if shape is None:  # AdamW for vectors and scalars
        V.mul_(beta2).addcmul_(G, G, value=1 - beta2)
        return (M / bc1) / (V.sqrt() / bc2_sqrt + eps)
    dt = V.dtype
    g_rot = _rotate(G.to(dt).reshape(shape), state)  # Q_L^T G Q_R with the basis of L_{t-1}, R_{t-1}
    V.mul_(beta2).addcmul_(g_rot, g_rot, value=1 - beta2)
    m_rot = _rotate(M.to(dt).reshape(shape), state)  # Q_L^T M Q_R
    N = _rotate((m_rot / bc1) / (V.sqrt() / bc2_sqrt + eps), state, back=True)  # Adam in the rotated frame
    _update_statistics(G, state, shape, shampoo_beta, refresh=(t - 1) % precondition_frequency == 0)
    return N.reshape(G.shape).to(G.dtype)


def _soap_direction_traced(G: Tensor, state: dict[str, Any], *, beta1: float, beta2: float,
                           shampoo_beta: float, eps: float, precondition_frequency: int) -> Tensor:
    """:func:`soap_direction` without reading the step counter on the host (for ``torch.compile``).

    Step 1 is not a branch: the moments keep their values there (``torch.where``) and the
    returned direction is zero; the basis refresh is a ``torch.cond`` on the counter, and the
    eigenbasis comes from :func:`_eigenbasis_traced`. Equal to the eager step up to round-off.
    """
    t = state["step"]
    first = t == 1
    shape = matrix_shape(G)
    k = t - 1  # gradients the moments have seen (0 at step 1: the NaN there is never selected)
    bc1, bc2_sqrt = 1 - beta1**k, (1 - beta2**k) ** 0.5
    M, V = state["exp_avg"], state["exp_avg_sq"]
    M.copy_(torch.where(first, M, M.lerp(G, 1 - beta1)))
    if shape is None:
        V.copy_(torch.where(first, V, V * beta2 + (1 - beta2) * G * G))
        N = (M / bc1) / (V.sqrt() / bc2_sqrt + eps)
        return torch.where(first, torch.zeros_like(N), N)
    dt = V.dtype
    g_rot = _rotate(G.to(dt).reshape(shape), state)
    V.copy_(torch.where(first, V, V * beta2 + (1 - beta2) * g_rot * g_rot))
    m_rot = _rotate(M.to(dt).reshape(shape), state)
    N = _rotate((m_rot / bc1) / (V.sqrt() / bc2_sqrt + eps), state, back=True)
    N = torch.where(first, torch.zeros_like(N), N)
    refresh = first | ((t - 1) % precondition_frequency == 0)
    g = G.to(dt).reshape(shape)
    for S, Q, GG in (("L", "Q_L", g @ g.T), ("R", "Q_R", g.T @ g)):
        if S in state:
            state[S].lerp_(GG, 1 - shampoo_beta)
            Q_new = torch.cond(refresh, lambda S_, Q_: _eigenbasis_traced(S_, Q_).clone(memory_format=torch.contiguous_format),
                               lambda S_, Q_: Q_.clone(memory_format=torch.contiguous_format), (state[S], state[Q]))
            state[Q].copy_(Q_new)
    return N.reshape(G.shape).to(G.dtype)


def _eigenbasis_traced(S: Tensor, Q_prev: Tensor) -> Tensor:
    """:func:`_eigenbasis` with tensor operations only (no loop over clusters found on the host).

    With ``T = Q_prev^T N`` and ``W = diag(1, ..., n)``, the diagonal block of ``T^T W T`` that
    belongs to a cluster is the matrix whose eigenvectors :func:`_eigenbasis` uses there. The
    off-cluster entries are zeroed and each block shifted by ``2 n`` times its cluster's index:
    the blocks' eigenvalues (within [1, n]) then stay apart and in cluster order, so one ``eigh``
    gives the same block-diagonal change of basis up to round-off (singletons get +-1, which the
    sign rule fixes)."""
    lam, N = torch.linalg.eigh(S)
    n = lam.numel()
    tol = 16 * n * torch.finfo(lam.dtype).eps * lam.abs().max()
    new_cluster = torch.cat([torch.ones(1, dtype=torch.bool, device=lam.device), (lam[1:] - lam[:-1]) > tol])
    cid = torch.cumsum(new_cluster.to(lam.dtype), 0)
    w = torch.arange(1, n + 1, dtype=lam.dtype, device=lam.device)
    T = Q_prev.clone().T @ N  # (a view of an input inside torch.cond trips its alias check)
    A = torch.where(cid[:, None] == cid[None, :], T.T @ (w[:, None] * T), 0.0)
    A = A + torch.diag(2 * n * cid)
    N = N @ torch.linalg.eigh(A)[1]
    rows = N.abs().argmax(dim=0)
    return N * torch.sign(N[rows, torch.arange(n, device=N.device)])


def _update_statistics(G: Tensor, state: dict[str, Any], shape: tuple[int, int], shampoo_beta: float,
                       refresh: bool) -> None:
    """L <- beta_s L + (1 - beta_s) G G^T, R likewise; new eigenvectors if ``refresh``."""
    g = G.to(state["exp_avg_sq"].dtype).reshape(shape)
    for S, Q, GG in (("L", "Q_L", g @ g.T), ("R", "Q_R", g.T @ g)):
        if S in state:
            state[S].lerp_(GG, 1 - shampoo_beta)
            if refresh:
                state[Q].copy_(_eigenbasis(state[S], state[Q]))


def _eigenbasis(S: Tensor, Q_prev: Tensor) -> Tensor:
    """Eigenvectors of the symmetric ``S`` (ascending eigenvalues), with a deterministic
    basis inside each (numerically) repeated eigenvalue: there ``eigh``'s basis is set by
    round-off, and Adam's per-coordinate second moment is not invariant to it. A cluster
    (consecutive eigenvalues no farther apart than ``16 n eps max|lambda|``) gets the eigenvectors of
    ``diag(1, ..., n)`` written in the previous basis ``Q_prev`` and restricted to the
    cluster (the cluster's directions ordered as they line up with ``Q_prev``'s columns);
    each column's largest entry is made positive."""
    lam, N = torch.linalg.eigh(S)
    n = lam.numel()
    tol = 16 * n * torch.finfo(lam.dtype).eps * float(lam.abs().max())
    bounds = [0] + [i + 1 for i, gap in enumerate((lam[1:] - lam[:-1]).tolist()) if gap > tol] + [n]
    w = torch.arange(1, n + 1, dtype=lam.dtype, device=lam.device)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a > 1:
            T = Q_prev.T @ N[:, a:b]  # the cluster's basis in the previous basis' coordinates
            N[:, a:b] = N[:, a:b] @ torch.linalg.eigh(T.T @ (w[:, None] * T))[1]
    rows = N.abs().argmax(dim=0)
    return N * torch.sign(N[rows, torch.arange(n, device=N.device)])


def soap(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float | Tensor,
    betas: tuple[float, float],
    shampoo_beta: float | None,
    eps: float,
    weight_decay: float,
    precondition_frequency: int,
    maximize: bool = False,
    foreach: bool | None = None,
) -> None:
    """Functional SOAP: update ``params`` and their ``states`` (from :func:`init_state`) in place."""
    beta1, beta2 = (_as_float(b) for b in betas)
    kw: dict[str, Any] = dict(lr=_as_float(lr), beta1=beta1, beta2=beta2,
              shampoo_beta=beta2 if shampoo_beta is None else shampoo_beta, eps=eps,
              weight_decay=weight_decay, precondition_frequency=precondition_frequency, maximize=maximize)
    impl = _resolve_impl(params, foreach)
    (_multi_tensor_soap if impl == "foreach" else _single_tensor_soap)(params, grads, states, **kw)


def _single_tensor_soap(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], *, lr: float,
    beta1: float, beta2: float, shampoo_beta: float, eps: float, weight_decay: float,
    precondition_frequency: int, maximize: bool,
) -> None:
    for W, G, state in zip(params, grads, states):
        if maximize:
            G = -G
        state["step"] += 1
        N = soap_direction(G, state, beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta, eps=eps,
                           precondition_frequency=precondition_frequency)
        if N is None:  # step 1: nothing moves
            continue
        if weight_decay != 0:
            W.mul_(_decay_factor(state, lr, weight_decay))
        W.add_(N, alpha=-lr)


def _decay_factor(state: dict[str, Any], lr: float, weight_decay: float) -> Any:
    """``1 - lr * weight_decay``; while compiling, 1 at a tensor's first step (which moves
    nothing, and is a value of the traced counter rather than a branch)."""
    if _compiling():
        return torch.where(state["step"] == 1, 1.0, 1 - lr * weight_decay)
    return 1 - lr * weight_decay


def _multi_tensor_soap(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], *, lr: float,
    beta1: float, beta2: float, shampoo_beta: float, eps: float, weight_decay: float,
    precondition_frequency: int, maximize: bool,
) -> None:
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads)  # type: ignore[assignment]  # a list (stubs: tuple)
    _increment_steps([s["step"] for s in states])
    directions = [
        soap_direction(G, s, beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta, eps=eps,
                       precondition_frequency=precondition_frequency)
        for G, s in zip(grads, states)
    ]
    moving = [(W, N) for W, N in zip(params, directions) if N is not None]
    if not moving:
        return
    params, directions = [list(x) for x in zip(*moving)]
    if weight_decay != 0:
        if _compiling():  # per tensor: no decay at a tensor's first step (see _decay_factor)
            torch._foreach_mul_(params, [_decay_factor(s, lr, weight_decay) for s in states])
        else:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
    _foreach_add_scaled_(params, directions, -lr)  # type: ignore[arg-type]  # Nones filtered out
