r"""Adafactor: factored second moments and relative step sizes.

:class:`Adafactor` is a drop-in replacement for :class:`torch.optim.Adafactor`;
:func:`adafactor` is its functional core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _check_lr,
    _check_nonnegative,
    _compiling,
    _fmt,
    _group_by_device_and_dtype,
    _increment_steps,
    _is_dtensor,
    _new_step,
    _real_number,
    _resolve_impl,
)
from ._torch_phrases import torch_phrase

__all__ = ["Adafactor", "adafactor"]

_T = TypeVar("_T")


class Adafactor(OptimizerBase):
    r"""Adafactor: Adam's second moment kept as row and column averages, with relative steps.

    With :math:`\theta_t` the parameters after :math:`t` steps (:math:`t = 0,
    1, \dots`), :math:`\rho` ``lr``, :math:`c` ``beta2_decay``,
    :math:`(\epsilon_1, \epsilon_2)` = ``eps``, :math:`d` ``d``,
    :math:`\lambda` ``weight_decay``, :math:`n = t + 1` the number of
    gradients seen after this step (the ``step`` counter), and
    :math:`\operatorname{RMS}(u) = \lVert u\rVert_2/\sqrt{\#u}`, the step from
    :math:`\theta_t` does

    .. math::

        g_t &= \pm\nabla f_t(\theta_t)
              \qquad (\text{minus sign if } \texttt{maximize}) \\
        \beta_{2,n} &= 1 - n^{c}, \qquad
        \rho_n = \min\!\left(\rho,\; 1/\sqrt{n}\right), \qquad
        \alpha_t = \max\!\left(\epsilon_2,\; \operatorname{RMS}(\theta_t)\right) \rho_n \\
        \text{matrix } (r\times k):\quad
        R_{t+1} &= \beta_{2,n} R_t + (1-\beta_{2,n})\, \tfrac1k (g_t^2)\,\mathbf 1_k, \qquad
        C_{t+1} = \beta_{2,n} C_t + (1-\beta_{2,n})\, \tfrac1r \mathbf 1_r^\top (g_t^2) \\
        \hat V_{t+1} &= \frac{R_{t+1}\, C_{t+1}}{\max(\operatorname{mean}(R_{t+1}),\; \epsilon_1)} \\
        \text{otherwise:}\quad
        \hat V_{t+1} &= V_{t+1} = \beta_{2,n} V_t + (1-\beta_{2,n})\, g_t^2 \\
        U_t &= \frac{g_t}{\sqrt{\max(\hat V_{t+1},\; \epsilon_1^2)}} \\
        \theta_{t+1} &= (1 - \rho\lambda)\, \theta_t
            - \frac{\alpha_t}{\max\!\left(1,\; \operatorname{RMS}(U_t)/d\right)}\, U_t

    with :math:`R_0 = C_0 = V_0 = 0`. For a matrix, :math:`R` (state
    ``row_var``, one number per row) and :math:`C` (``col_var``, one per
    column) are moving averages of the row and column means of
    :math:`g^2`; their outer product divided by the mean of :math:`R` is
    the rank-1 reconstruction :math:`\hat V` that Shazeer & Stern derive
    (it is exact when :math:`g^2` has rank one). The state is :math:`r + k`
    numbers where a full second moment takes :math:`rk` (and Adam, with its
    first moment, :math:`2rk`). Tensors of more than two dimensions are
    factored over their last two dimensions (the leading ones are a batch);
    vectors and scalars keep a full :math:`V`.

    * :math:`\beta_{2,n} = 1 - n^{c}` grows towards 1 (with :math:`c = -0.8`,
      :math:`\beta_{2,1} = 0`): the first step uses :math:`g_0^2` exactly, so
      no bias correction is needed.
    * **Relative step size**: :math:`\alpha_t` is the parameters' RMS (at
      least :math:`\epsilon_2`) times :math:`\rho_n`, which is capped by
      :math:`\rho` and decays as :math:`1/\sqrt{n}` once :math:`n > 1/\rho^2`.
    * **Update clipping**: :math:`U_t` is scaled down when its RMS exceeds
      :math:`d`, which replaces momentum's smoothing of rare large updates.

    Conventions (those of ``torch.optim.Adafactor``), and where they differ
    from the paper:

    * No first moment (the paper's :math:`\beta_1 = 0` setting).
    * :math:`\epsilon_1` bounds :math:`\hat V` from below (by
      :math:`\epsilon_1^2`) and the mean of :math:`R` (by :math:`\epsilon_1`);
      the paper adds :math:`\epsilon_1` to :math:`g^2`. ``eps[0] = None``
      (the default) means the machine epsilon of the parameter's dtype.
    * The row and column means are computed as squared norms divided by
      the length, :math:`\lVert g\rVert^2/k`.
    * Weight decay is decoupled and scaled by :math:`\rho` (``lr``), not by
      the actual step :math:`\alpha_t`; :math:`\alpha_t` is computed before
      the decay.
    * Complex parameters are refused, as by torch.

    State per parameter: ``step`` and either ``row_var`` (:math:`R_t`, shape
    with the last dimension 1) and ``col_var`` (:math:`C_t`, the
    second-to-last dimension 1), or ``variance`` (:math:`V_t`), as in
    ``torch.optim.Adafactor``.

    **DTensor parameters (FSDP2's** ``fully_shard``, **or any placements**
    ``Shard(d)`` **and** ``Replicate`` **on a device mesh)** train as the whole
    tensor would on one process, up to round-off (float64: 1e-17 in the
    two-process test of ``tests/test_distributed.py``, with uneven and empty
    shards). Each rank works on its local shard; every sum over a sharded
    dimension is a local sum followed by an all-reduce over the mesh
    dimensions that shard it, and every mean divides by the global length: the
    RMS of :math:`\theta_t` and of :math:`U_t`, the row means of :math:`g^2`
    if the last dimension is sharded, the column means and the mean of
    :math:`R` if the second-to-last is (the case of FSDP2's row shards). That
    is three all-reduces per step (one per set of process groups), of
    :math:`k + 3` float64 numbers per :math:`r\times k` matrix sharded by rows
    (its :math:`k` column sums of :math:`g^2`; one each for
    :math:`\lVert\theta_t\rVert^2`, the sum of :math:`R` and
    :math:`\lVert U_t\rVert^2`) and two per vector, whatever ``foreach``
    says (DTensors always take this path).
    The state is DTensors on the parameter's mesh: ``row_var`` and
    ``variance`` sharded as the parameter, ``col_var`` sharded on the leading
    dimensions and replicated along the mesh dimensions that shard the rows,
    so ``state_dict()`` and ``load_state_dict()`` work as for any FSDP2
    optimizer. Other placements (``_StridedShard``, ``Partial``) raise
    ``TypeError`` at the first step. (``torch.optim.Adafactor`` in torch 2.13
    raises ``RuntimeError`` under FSDP2: an in-place op on a pending norm
    reduction.)

    Args:
        params: iterable of parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: largest relative step size :math:`\rho \ge 0`, float or 1-element
            tensor (default: 1e-2).
        beta2_decay: :math:`c \le 0`, the exponent in :math:`\beta_{2,n} = 1 - n^{c}` (default: -0.8).
        eps: :math:`(\epsilon_1, \epsilon_2)`, :math:`\epsilon_1 \ge 0` or None
            (machine epsilon), :math:`\epsilon_2 \ge 0` (default: (None, 1e-3)).
        d: clipping threshold :math:`d \ge 1` on the RMS of :math:`U_t` (default: 1.0).
        weight_decay: :math:`\lambda \ge 0` (default: 0.0).
        foreach: use the multi-tensor ``torch._foreach_*`` implementation;
            ``None`` (the default) picks it, as ``torch.optim`` does, when all
            tensors are plain tensors on CUDA (or another accelerator with
            foreach kernels), and the single-tensor loop on CPU.
        maximize: maximize the objective instead of minimizing (default: False).

    Reference:
        Shazeer & Stern (2018), *Adafactor: Adaptive Learning Rates with
        Sublinear Memory Cost*, ICML.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        with torch_phrase(f"Learning rate should be >= 0 but is: {_fmt(lr)}"):
            _check_lr(lr)
        with torch_phrase(f"beta2_decay should be <= 0 but is: {beta2_decay}"):
            if not _real_number("beta2_decay", beta2_decay) <= 0:
                raise ValueError(f"Invalid beta2_decay: {beta2_decay!r} (must be <= 0)")
        if isinstance(eps, (str, Tensor)) or not isinstance(eps, Sequence) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r} (must be a pair (eps1 or None, eps2))")
        if eps[0] is not None:
            with torch_phrase(f"epsilon1 should be >= 0 but is: {eps[0]}"):
                _check_nonnegative("eps[0]", eps[0])
        with torch_phrase(f"epsilon2 should be >= 0 but is: {eps[1]}"):
            _check_nonnegative("eps[1]", eps[1])
        with torch_phrase(f"Clipping threshold d should be >= 1 but is: {d}"):
            if not _real_number("d", d) >= 1:
                raise ValueError(f"Invalid d: {d!r} (must be >= 1)")
        with torch_phrase(f"weight_decay should be >= 0 but is: {weight_decay}"):
            _check_nonnegative("weight_decay", weight_decay)
        _check_impl_flags("Adafactor", foreach=foreach)
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=tuple(eps),
            d=d,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"step": _new_step()}
        if _is_dtensor(p):
            state.update(_sharded_state(p))
        elif p.dim() > 1:
            state["row_var"] = p.new_zeros(p.shape[:-1] + (1,))
            state["col_var"] = p.new_zeros(p.shape[:-2] + (1, p.shape[-1]))
        else:
            state["variance"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads, _, has_complex = self._gather(group)
        if has_complex:
            raise RuntimeError(
                "Adafactor does not support complex parameters (its factored second "
                "moments are defined for real matrices; view them with torch.view_as_real)"
            )
        states = [self._lazy_state(p, group) for p in params]
        eps1, eps2 = group["eps"]
        adafactor(
            params,
            grads,
            [s.get("row_var") for s in states],
            [s.get("col_var") for s in states],
            [s.get("variance") for s in states],
            [s["step"] for s in states],
            lr=group["lr"],
            beta2_decay=group["beta2_decay"],
            eps1=eps1,
            eps2=eps2,
            d=group["d"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=group["foreach"],
        )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def adafactor(
    params: list[Tensor],
    grads: list[Tensor],
    row_vars: list[Tensor | None],
    col_vars: list[Tensor | None],
    variances: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor = 1e-2,
    beta2_decay: float = -0.8,
    eps1: float | None = None,
    eps2: float = 1e-3,
    d: float = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
) -> None:
    r"""Functional Adafactor: update ``params`` and the state lists in place.

    For each parameter either ``row_vars[i]`` and ``col_vars[i]`` (:math:`R`,
    :math:`C`; matrices and higher) or ``variances[i]`` (:math:`V`; vectors
    and scalars) is a tensor and the other entries are None.
    ``state_steps`` are 0-dim tensors, incremented here. See :class:`Adafactor`.
    """
    if not all(torch.is_tensor(s) for s in state_steps):
        raise TypeError("state_steps must be a list of 0-dim tensors")
    sharded = [_is_dtensor(p) for p in params]
    if any(sharded):  # DTensors (FSDP2): their own path, whatever ``foreach`` says
        _sharded_adafactor(
            _where(params, sharded), _where(grads, sharded), _where(row_vars, sharded),
            _where(col_vars, sharded), _where(variances, sharded), _where(state_steps, sharded),
            lr=lr, beta2_decay=beta2_decay, eps1=eps1, eps2=eps2, d=d,
            weight_decay=weight_decay, maximize=maximize,
        )
        plain = [not s for s in sharded]
        params, grads, state_steps = _where(params, plain), _where(grads, plain), _where(state_steps, plain)
        row_vars, col_vars = _where(row_vars, plain), _where(col_vars, plain)
        variances = _where(variances, plain)
        if not params:
            return
    impl = _resolve_impl(params, foreach)
    func = _multi_tensor_adafactor if impl == "foreach" else _single_tensor_adafactor
    func(
        params,
        grads,
        row_vars,
        col_vars,
        variances,
        state_steps,
        lr=lr,
        beta2_decay=beta2_decay,
        eps1=eps1,
        eps2=eps2,
        d=d,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def _where(items: list[_T], keep: list[bool]) -> list[_T]:
    """The entries of ``items`` whose ``keep`` is True."""
    return [x for x, k in zip(items, keep) if k]


def _rms(u: Tensor) -> float:
    """RMS(u) = ||u||_2 / sqrt(#u), as a Python float (a 0-dim tensor while compiling:
    no host synchronisation, no graph break)."""
    if _compiling():
        return u.norm(2) / (u.numel() ** 0.5)  # a 0-dim Tensor
    return u.norm(2).item() / (u.numel() ** 0.5)


def _at_least(x: Any, lower: float) -> Any:
    """``max(x, lower)`` of a Python number, or of the 0-dim tensor it is while compiling."""
    return torch.clamp(x, min=lower) if isinstance(x, Tensor) else max(lower, x)


def _step_scalars(
    theta: Tensor, n: float, lr: float | Tensor, beta2_decay: float, eps2: float,
    rms: float | None = None,
) -> tuple[float, float]:
    """``(1 - beta2_n, alpha_t)``: the moving averages' weight and the step before clipping
    (``rms``: RMS(theta) if already known, as for a sharded tensor). While compiling, ``n``
    and the results are 0-dim tensors."""
    if isinstance(n, Tensor):
        rho_n: Any = torch.clamp(1 / n**0.5, max=lr)  # relative step size
    else:
        rho_n = min(lr, 1 / (n**0.5))
    return n**beta2_decay, _at_least(_rms(theta) if rms is None else rms, eps2) * rho_n


def _mean_squares(g: Tensor, dim: int) -> Tensor:
    """Mean of g^2 along ``dim`` (kept), computed as ||g||^2 / length like torch."""
    return torch.norm(g, dim=dim, keepdim=True).square_().div_(g.size(dim))


def _single_tensor_adafactor(
    params: list[Tensor],
    grads: list[Tensor],
    row_vars: list[Tensor | None],
    col_vars: list[Tensor | None],
    variances: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta2_decay: float,
    eps1: float | None,
    eps2: float,
    d: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    for i, theta in enumerate(params):
        g = grads[i] if not maximize else -grads[i]
        if eps1 is None:
            eps1 = torch.finfo(theta.dtype).eps
        state_steps[i] += 1
        n = _as_float(state_steps[i])  # gradients seen, t + 1 (the 0-dim tensor while compiling)
        w, alpha = _step_scalars(theta, n, lr, beta2_decay, eps2)  # w = 1 - beta2_n

        if weight_decay != 0:
            theta.mul_(1 - lr * weight_decay)  # theta <- (1 - rho * lambda) * theta

        if g.dim() > 1:
            R, C = cast(Tensor, row_vars[i]), cast(Tensor, col_vars[i])  # set when factored
            R.lerp_(_mean_squares(g, -1), w)  # R_{t+1}: row means of g^2
            C.lerp_(_mean_squares(g, -2), w)  # C_{t+1}: column means of g^2
            V_hat = R @ C  # rank-1 reconstruction R C / mean(R)
            V_hat.div_(R.mean(dim=-2, keepdim=True).clamp_(min=eps1))
        else:
            V = cast(Tensor, variances[i])  # set when not factored
            V.lerp_(g * g, w)  # V_{t+1} = beta2_n V_t + (1 - beta2_n) g_t^2
            V_hat = V.clone()

        U = V_hat.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)  # U_t = g / sqrt(max(V_hat, eps1^2))
        clip = _at_least(_rms(U) / d, 1.0)  # update clipping
        theta.add_(U, alpha=-alpha / clip)


def _group_by_device_dtype_and_factoring(
    tensorlists: Sequence[Sequence[Tensor | None]],
) -> dict[tuple[torch.device, torch.dtype, bool], list[list[Any]]]:
    """:func:`_group_by_device_and_dtype`, each bucket split into factored
    (the gradient, ``tensorlists[1]``, has two or more dims) and unfactored tensors."""
    out: dict[tuple[torch.device, torch.dtype, bool], list[list[Any]]] = {}
    for (device, dtype), (lists, _) in _group_by_device_and_dtype(tensorlists).items():
        for j, g in enumerate(lists[1]):
            bucket = out.setdefault((device, dtype, g.dim() > 1), [[] for _ in lists])
            for lst, src in zip(bucket, lists):
                lst.append(src[j])
    return out


def _multi_tensor_adafactor(
    params: list[Tensor],
    grads: list[Tensor],
    row_vars: list[Tensor | None],
    col_vars: list[Tensor | None],
    variances: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta2_decay: float,
    eps1: float | None,
    eps2: float,
    d: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    if not params:
        return
    lr = _as_float(lr)
    buckets = _group_by_device_dtype_and_factoring(
        [params, grads, row_vars, col_vars, variances, state_steps]
    )
    for (_, _, factored), (p_list, g_list, R_list, C_list, V_list, steps) in buckets.items():
        # (per bucket: torch.optim keeps the first bucket's machine epsilon for
        # all buckets of a group that mixes dtypes)
        # (p_list[0].dtype: while compiling, torch does not bucket and the key holds None)
        eps1_b = torch.finfo(p_list[0].dtype).eps if eps1 is None else eps1
        if maximize:
            g_list = torch._foreach_neg(g_list)  # type: ignore[assignment]  # a list (stubs: tuple)
        _increment_steps(steps)
        ws, alphas = zip(*(_step_scalars(p, _as_float(n), lr, beta2_decay, eps2) for p, n in zip(p_list, steps)))

        if weight_decay != 0:
            torch._foreach_mul_(p_list, 1 - lr * weight_decay)

        if factored:
            for lst, dim in ((R_list, -1), (C_list, -2)):
                means = [torch.norm(g, dim=dim, keepdim=True) for g in g_list]
                torch._foreach_mul_(means, means)
                torch._foreach_div_(means, [g.size(dim) for g in g_list])
                torch._foreach_lerp_(lst, means, list(ws))
                del means
            V_hats = [R @ C for R, C in zip(R_list, C_list)]
            R_means = [R.mean(dim=-2, keepdim=True) for R in R_list]
            torch._foreach_clamp_min_(R_means, eps1_b)
            torch._foreach_div_(V_hats, R_means)
            del R_means
        else:
            squares = torch._foreach_mul(g_list, g_list)
            torch._foreach_lerp_(V_list, squares, list(ws))
            del squares
            V_hats = [V.clone() for V in V_list]

        torch._foreach_clamp_min_(V_hats, eps1_b * eps1_b)
        torch._foreach_rsqrt_(V_hats)
        torch._foreach_mul_(V_hats, g_list)
        updates = V_hats
        torch._foreach_mul_(updates, [-a / _at_least(_rms(u) / d, 1.0) for a, u in zip(alphas, updates)])
        torch._foreach_add_(p_list, updates)


# --------------------------------------------------------------------------- #
# DTensor parameters (FSDP2): local shards and explicit all-reduces            #
# --------------------------------------------------------------------------- #


def _mesh_shards(p: Tensor) -> list[tuple[int, int]]:
    """``(mesh dimension, tensor dimension)`` of every ``Shard(d)`` placement of
    the DTensor ``p`` (``Replicate`` mesh dimensions hold copies: nothing to sum)."""
    from torch.distributed.tensor import Replicate, Shard

    out = []
    for mesh_dim, placement in enumerate(p.placements):  # type: ignore[attr-defined]  # a DTensor
        if type(placement) is Shard:
            out.append((mesh_dim, placement.dim % p.dim()))
        elif not isinstance(placement, Replicate):
            raise TypeError(
                f"Adafactor supports DTensor parameters sharded with Shard(d) or replicated, "
                f"not the placement {placement!r}"
            )
    return out


def _reduce_groups(p: Tensor, dims: Sequence[int]) -> tuple[Any, ...]:
    """The process groups over which a sum of ``p``'s shards over the tensor
    dimensions ``dims`` (negative allowed) must be all-reduced."""
    wanted = {dim % p.dim() for dim in dims}
    mesh = p.device_mesh  # type: ignore[attr-defined]  # a DTensor
    return tuple(mesh.get_group(m) for m, dim in _mesh_shards(p) if dim in wanted)


def _sharded_zeros(p: Tensor, reduced: int | None = None) -> Tensor:
    """A zero DTensor laid out like ``p``; with ``reduced``, of size 1 along that
    dimension, and replicated on the mesh dimensions that shard it."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    local = p.to_local()  # type: ignore[attr-defined]  # a DTensor
    shape, local_shape = list(p.shape), list(local.shape)
    placements = list(p.placements)  # type: ignore[attr-defined]  # a DTensor
    if reduced is not None:
        reduced %= p.dim()
        shape[reduced] = local_shape[reduced] = 1
        placements = [Replicate() if type(pl) is Shard and pl.dim % p.dim() == reduced else pl
                      for pl in placements]
    size = torch.Size(shape)
    return DTensor.from_local(
        torch.zeros(local_shape, dtype=local.dtype, device=local.device),
        p.device_mesh, placements, run_check=False, shape=size,  # type: ignore[attr-defined]
        stride=torch.empty(size, device="meta").stride(),
    )


def _sharded_state(p: Tensor) -> dict[str, Tensor]:
    """The state tensors of a DTensor parameter: DTensors on its mesh.

    ``row_var`` (global shape ``p.shape[:-1] + (1,)``) is sharded as ``p``
    along the leading dimensions; ``col_var`` (``p.shape[:-2] + (1, k)``)
    likewise, and replicated along the mesh dimensions that shard ``p``'s rows
    (FSDP2: ``Shard(0)`` of a matrix gives row shards of ``row_var`` and a
    replicated ``col_var``); ``variance`` is laid out as ``p``.
    """
    _mesh_shards(p)  # refuses other placements
    if p.dim() > 1:
        return {"row_var": _sharded_zeros(p, -1), "col_var": _sharded_zeros(p, -2)}
    return {"variance": _sharded_zeros(p)}


def _all_reduce_sums(tensors: list[Tensor], groups: Sequence[tuple[Any, ...]]) -> None:
    """Sum, in place, each ``tensors[i]`` over the ranks of every group in
    ``groups[i]``: one all-reduce per distinct tuple of groups (in order of first
    appearance, the same on every rank), on the float64 concatenation of its tensors."""
    import torch.distributed as dist

    by_groups: dict[tuple[Any, ...], list[int]] = {}
    for i, gs in enumerate(groups):
        if gs:
            by_groups.setdefault(gs, []).append(i)
    for gs, idx in by_groups.items():
        flat = torch.cat([tensors[i].reshape(-1).to(torch.float64) for i in idx])
        for group in gs:
            dist.all_reduce(flat, group=group)
        pos = 0
        for i in idx:
            n = tensors[i].numel()
            tensors[i].copy_(flat[pos:pos + n].view_as(tensors[i]))
            pos += n


def _local_squares(u: Tensor) -> Tensor:
    """``||u||^2`` of a local shard, float64, shape ``(1,)``."""
    return torch.linalg.vector_norm(u).to(torch.float64).square().reshape(1)


def _sharded_adafactor(
    params: list[Tensor],
    grads: list[Tensor],
    row_vars: list[Tensor | None],
    col_vars: list[Tensor | None],
    variances: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta2_decay: float,
    eps1: float | None,
    eps2: float,
    d: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """The single-tensor update for DTensor parameters, on their local shards.

    Every sum over a sharded dimension is a local sum followed by an all-reduce
    over the mesh dimensions that shard it, and every mean divides by the
    global size: RMS(theta) and RMS(U) (all entries), the row means of
    ``g^2`` (last dimension), the column means and the mean of ``R``
    (second-to-last). Three all-reduces per step (one per distinct set of
    process groups), whatever the number of parameters: the sums of squares of
    the parameters and the row and column sums of ``g^2``, then the sums of
    ``R``, then the sums of squares of the updates.
    """
    if not params:
        return
    thetas = [p.to_local() for p in params]  # type: ignore[attr-defined]  # DTensors
    gs = [g.to_local() for g in grads]  # type: ignore[attr-defined]
    if maximize:
        gs = [-g for g in gs]
    if eps1 is None:  # as the single-tensor path: the first parameter's dtype
        eps1 = torch.finfo(params[0].dtype).eps
    factored = [p.dim() > 1 for p in params]
    all_groups = [_reduce_groups(p, range(p.dim())) for p in params]

    # 1. ||theta||^2, and the row / column sums of g^2 where their dimension is sharded
    sums: list[Tensor] = []
    groups: list[tuple[Any, ...]] = []
    for p, theta, g, f, ag in zip(params, thetas, gs, factored, all_groups):
        sums.append(_local_squares(theta))
        groups.append(ag)
        if f:
            for dim in (-1, -2):
                sums.append(torch.norm(g, dim=dim, keepdim=True).square_())
                groups.append(_reduce_groups(p, [dim]))
    _all_reduce_sums(sums, groups)

    Us: list[Tensor] = []
    pos = 0
    alphas = []
    for i, (p, theta, g) in enumerate(zip(params, thetas, gs)):
        state_steps[i] += 1
        n = state_steps[i].item()  # gradients seen, t + 1
        rms = math.sqrt(sums[pos].item()) / (p.numel() ** 0.5)
        pos += 1
        w, alpha = _step_scalars(theta, n, lr, beta2_decay, eps2, rms=rms)  # w = 1 - beta2_n
        alphas.append(alpha)
        if weight_decay != 0:
            theta.mul_(1 - lr * weight_decay)  # theta <- (1 - rho * lambda) * theta
        if factored[i]:
            R = cast(Tensor, row_vars[i]).to_local()  # type: ignore[attr-defined]  # DTensor
            C = cast(Tensor, col_vars[i]).to_local()  # type: ignore[attr-defined]
            R.lerp_(sums[pos].to(g.dtype).div_(p.shape[-1]), w)  # row means of g^2, global length
            C.lerp_(sums[pos + 1].to(g.dtype).div_(p.shape[-2]), w)  # column means of g^2
            pos += 2
            Us.append(R @ C)  # R C, divided below by mean(R) over all rows
        else:
            V = cast(Tensor, variances[i]).to_local()  # type: ignore[attr-defined]  # DTensor
            V.lerp_(g * g, w)  # V_{t+1} = beta2_n V_t + (1 - beta2_n) g_t^2
            Us.append(V.clone())

    # 2. mean(R) over the (possibly sharded) rows
    R_sums = [cast(Tensor, row_vars[i]).to_local().sum(dim=-2, keepdim=True)  # type: ignore[attr-defined]
              for i in range(len(params)) if factored[i]]
    _all_reduce_sums(R_sums, [_reduce_groups(p, [-2]) for p, f in zip(params, factored) if f])
    j = 0
    for i, p in enumerate(params):
        if factored[i]:
            R_mean = R_sums[j].to(Us[i].dtype).div_(p.shape[-2])
            j += 1
            Us[i].div_(R_mean.clamp_(min=eps1))  # V_hat = R C / max(mean(R), eps1)
        Us[i] = Us[i].clamp_(min=eps1 * eps1).rsqrt_().mul_(gs[i])  # U = g / sqrt(max(V_hat, eps1^2))

    # 3. RMS(U) over all entries: the update clipping
    U_sums = [_local_squares(U) for U in Us]
    _all_reduce_sums(U_sums, all_groups)
    for p, theta, U, s, alpha in zip(params, thetas, Us, U_sums, alphas):
        clip = max(1.0, math.sqrt(s.item()) / (p.numel() ** 0.5) / d)  # update clipping
        theta.add_(U, alpha=-alpha / clip)
