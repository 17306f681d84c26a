r"""Limited-memory full-matrix AdaGrad (LM-Adagrad) and exact full-matrix AdaGrad.

:class:`LMAdagrad` whitens each gradient with the last :math:`k` gradients;
:class:`FullMatrixAdagrad` is the exact, :math:`O(d^2)`-memory method it
approximates (for small :math:`d`: the reference of the book and the tests).
:func:`lm_adagrad` is their functional core.

The whitening is computed from the :math:`k\times k` Gram matrix of the history
(never from a :math:`d\times d` matrix, and without an SVD of the
:math:`d\times k` history), the route of Section 3 of Agarwal et al. (GGT).
Chapter 10 of the book derives every line.
"""

from __future__ import annotations

import functools
import numbers
import operator
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast, overload

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import (
    _is_dtensor,
    _foreach_l2_grads,
    OptimizerBase,
    _as_float,
    _check_impl_flags,
    _check_lr,
    _check_nonnegative,
    _check_range,
    _compiling,
    _group_by_device_and_dtype,
    _increment_steps,
    _new_step,
    _real,
    _resolve_impl,
)

if TYPE_CHECKING:  # importing torch.distributed.tensor costs seconds: only for the type checker
    from torch.distributed.tensor import DTensor

__all__ = ["LMAdagrad", "FullMatrixAdagrad", "lm_adagrad"]

#: eigenvalues of the (float64) Gram matrix below ``_RTOL_FACTOR * n * eps(float64) * trace(M^T M)``
#: are treated as zero.
_RTOL_FACTOR = 10.0

_MOMENTUM_MODES = ("gradient", "update")
_UPDATE_NORMS = (None, "clip", "graft")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be True or False)")


def _check_history_size(value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"Invalid history_size: {value!r} (must be an int >= 1{extra})")


def _check_no_differentiable(name: str, differentiable: bool) -> None:
    if differentiable:
        raise ValueError(
            f"Invalid differentiable: True (must be False: differentiating through the step "
            f"is not implemented by optimizers.{name})"
        )


# --------------------------------------------------------------------------- #
# Checks shared by both classes: DTensors, memory, non-finite gradients        #
# --------------------------------------------------------------------------- #


def _as_dtensor(t: Tensor) -> DTensor | None:
    """``t`` if it is a DTensor (an FSDP2 shard), else None: :func:`_is_dtensor`
    as a narrowing the type checker follows."""
    return cast("DTensor", t) if _is_dtensor(t) else None


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor, ``t`` itself otherwise."""
    dt = _as_dtensor(t)
    return t if dt is None else dt.to_local()


def _check_no_dtensor(name: str, group_index: int, params: list[Tensor], why: str) -> None:
    """Raise ``TypeError`` for a DTensor parameter (FSDP2 shards), naming where it is and ``why``."""
    for j, p in enumerate(params):
        dt = _as_dtensor(p)
        if dt is not None:
            raise TypeError(
                f"{name} does not support DTensor parameters, but "
                f"param_groups[{group_index}]['params'][{j}] is a DTensor with placements "
                f"{tuple(dt.placements)} (FSDP2's fully_shard makes them): {why}. Keep such "
                "parameters out of fully_shard, or optimize them with another optimizer"
            )


def _shard_groups(p: Tensor) -> tuple[Any, ...]:
    """The process groups over which the shards of ``p`` must be summed.

    For a DTensor, one group per mesh dimension on which ``p`` is sharded
    (``Shard(d)``; ``Replicate`` dimensions hold identical copies and need no
    sum); for a plain tensor, none.
    """
    dt = _as_dtensor(p)
    if dt is None:
        return ()
    from torch.distributed.tensor import Replicate, Shard

    groups = []
    for dim, placement in enumerate(dt.placements):
        if type(placement) is Shard:
            groups.append(dt.device_mesh.get_group(dim))
        elif not isinstance(placement, Replicate):
            raise TypeError(
                f"LMAdagrad supports DTensor parameters sharded with Shard(d) or replicated, "
                f"not the placement {placement!r}"
            )
    return tuple(groups)


def _history_like(p: Tensor, k: int) -> Tensor:
    """A zero ring buffer of ``k`` slots for ``p``: for a DTensor, a DTensor of
    global shape ``(k, *p.shape)`` whose shards are the slots of ``p``'s own
    shard (``Shard(d)`` becomes ``Shard(d + 1)``)."""
    dt = _as_dtensor(p)
    if dt is None:
        return torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device)
    from torch.distributed.tensor import DTensor, Shard

    local = dt.to_local()
    placements = [Shard(pl.dim + 1) if type(pl) is Shard else pl for pl in dt.placements]
    shape = torch.Size((k, *p.shape))
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(
        torch.zeros((k, *local.shape), dtype=local.dtype, device=local.device),
        dt.device_mesh, placements, run_check=False, shape=shape, stride=stride,
    )


def _all_reduce_sums(tensors: Sequence[Tensor | None],
                     shard_groups: Sequence[tuple[Any, ...]]) -> None:
    """Sum, in place, each ``tensors[i]`` (None: skipped) over the ranks of ``shard_groups[i]``:
    one all-reduce per distinct set of groups, on the concatenation of its tensors."""
    import torch.distributed as dist

    by_groups: dict[tuple[Any, ...], list[Tensor]] = {}
    for t, groups in zip(tensors, shard_groups):
        if t is not None and groups:
            by_groups.setdefault(groups, []).append(t)
    for groups, ts in by_groups.items():
        flat = torch.cat([t.reshape(-1) for t in ts])
        for group in groups:
            dist.all_reduce(flat, group=group)
        pos = 0
        for t in ts:
            n = t.numel()
            t.copy_(flat[pos:pos + n].view_as(t))
            pos += n


def _check_finite_sharded_grads(opt: OptimizerBase) -> None:
    """:func:`_check_finite_grads` for sharded parameters: every rank raises,
    before anything is updated, if any rank's shard of any gradient has a
    non-finite entry (one all-reduce of one number per process group)."""
    import torch.distributed as dist

    entries = [
        (gi, j, p)
        for gi, group in enumerate(opt.param_groups)
        for j, p in enumerate(group["params"])
        if p.grad is not None and not p.grad.is_sparse
    ]
    if not entries:
        return
    groups: list[Any] = []
    for _, _, p in entries:
        for g in _shard_groups(p):
            if g not in groups:
                groups.append(g)
    i = _first_nonfinite([p.grad for _, _, p in entries])
    first = torch.tensor([len(entries) if i is None else i], dtype=torch.float64,
                         device=_local(entries[0][2].grad).device)
    for g in groups:
        dist.all_reduce(first, op=dist.ReduceOp.MIN, group=g)
    i_all = int(first.item())
    if i_all == len(entries):
        return
    gi, j, p = entries[i_all]
    state = opt.state.get(p)
    t = int(state["step"]) if state and "step" in state else 0
    label = f"param_groups[{gi}]['params'][{j}]"
    if not bool(torch.isfinite(_local(p.grad)).all()):
        raise _nonfinite_error(type(opt).__name__, label + " (this rank's shard)", p, p.grad, t)
    raise FloatingPointError(
        f"{type(opt).__name__}: the gradient of {label} (shape {tuple(p.shape)}, {p.dtype}) has "
        f"non-finite entries in another rank's shard, at step t = {t} of this parameter. Nothing "
        "was updated on any rank: the step can be skipped and training continued"
    )


@functools.lru_cache(maxsize=None)
def _device_memory(device: torch.device) -> int | None:
    """Bytes of memory of ``device`` (the machine's RAM for the CPU), or None if unknown."""
    try:
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
    except (AttributeError, OSError, RuntimeError, ValueError, AssertionError):
        pass
    return None


def _format_bytes(n: int) -> str:
    for unit, size in (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _check_state_memory(
    name: str,
    groups: list[dict[str, Any]],
    state_bytes: Callable[[Tensor, dict[str, Any]], tuple[int, int]],
    advice: str,
) -> None:
    """Refuse, before anything is allocated, a state that cannot fit on its device.

    ``state_bytes(p, group)`` gives the bytes of ``p``'s state and of the
    largest work buffers one step of ``p`` allocates; per device, the sum of
    the states plus the largest work buffer must not exceed the device's
    memory (:func:`_device_memory`; devices of unknown size are not checked).
    """
    need: dict[torch.device, list[int]] = {}
    for group in groups:
        for p in group["params"]:
            state, work = state_bytes(p, group)
            acc = need.setdefault(p.device, [0, 0])
            acc[0] += state
            acc[1] = max(acc[1], work)
    for device, (state, work) in need.items():
        limit = _device_memory(device)
        total = state + work
        if limit is not None and total > limit:
            sizes = sorted({g["history_size"] for g in groups}, key=lambda k: (k is not None, k))
            raise ValueError(
                f"{name} would need {total} bytes ({_format_bytes(total)}) on {device} "
                f"({state} for the optimizer state, {work} for one step's work buffers; "
                f"history_size: {', '.join(map(repr, sizes))}), more than the "
                f"{_format_bytes(limit)} of memory of {device}. {advice}"
            )


def _lm_state_bytes(p: Tensor, group: dict[str, Any]) -> tuple[int, int]:
    """LMAdagrad: the ring buffer (k values per entry), the k x k float64 Gram
    matrix, the momentum buffer; work: two k x k float64 copies of the Gram
    matrix (the block's and the host's), its eigenvectors, a float64 chunk of
    the window."""
    k, n, size = group["history_size"], p.numel(), p.element_size()
    state = k * n * size + 8 * k * k + (n * size if group["momentum"] != 0 else 0)
    d = _real(p).numel() if p.numel() else 0
    work = 8 * 3 * k * k + 8 * k * min(d, _chunk(p.device))
    return state, work


def _full_state_bytes(p: Tensor, group: dict[str, Any]) -> tuple[int, int]:
    """FullMatrixAdagrad: the d x d sum (or the window of k gradients); work:
    the float64 d x d matrix and its eigenvectors (and the float64 window)."""
    k = group["history_size"]
    d, size = _real(p).numel(), _real(p).element_size()
    if k is None:
        return d * d * size, 8 * 2 * d * d
    return k * p.numel() * p.element_size(), 8 * (k * d + 2 * d * d)


def _first_nonfinite(grads: list[Tensor]) -> int | None:
    """Index of the first gradient with a NaN or infinite entry, or None.

    One ``torch._foreach_norm`` per device (a pass over the gradients, cheap
    next to the :math:`O(dk)` whitening) and one host read per device. A norm
    that overflows although every entry is finite (possible in float16) is
    looked at entry by entry before being called non-finite.
    """
    by_device: dict[torch.device, list[int]] = {}
    locals_ = [_local(g) for g in grads]
    for i, g in enumerate(locals_):
        by_device.setdefault(g.device, []).append(i)
    first = None
    for idx in by_device.values():
        norms = torch._foreach_norm([locals_[i] for i in idx])
        if bool(torch.stack(norms).isfinite().all()):
            continue
        for i, norm in zip(idx, norms):
            if not bool(norm.isfinite()) and not bool(torch.isfinite(locals_[i]).all()):
                first = i if first is None else min(first, i)
                break
    return first


def _nonfinite_error(name: str, label: str, p: Tensor, g: Tensor, t: int) -> FloatingPointError:
    g = _local(g)
    bad = ~torch.isfinite(g)
    n_bad, n_nan = int(bad.sum()), int(torch.isnan(g).sum())
    where = tuple(torch.nonzero(bad)[0].tolist())
    return FloatingPointError(
        f"{name}: the gradient of {label} (shape {tuple(p.shape)}, {p.dtype}) has {n_nan} NaN and "
        f"{n_bad - n_nan} infinite entries out of {g.numel()} (the first at index {where}), at step "
        f"t = {t} of this parameter (its gradient number {t + 1}). Nothing was updated: the "
        "parameters and the optimizer state are as before this call, so the step can be skipped "
        "(as torch.amp.GradScaler skips it) and training continued. Every entry of a whitened "
        "update depends on every entry of the gradient, so the finite entries cannot be updated alone"
    )


def _check_finite_grads(opt: OptimizerBase) -> None:
    """Raise :class:`FloatingPointError` if any gradient of any group of
    ``opt`` has a non-finite entry, before any group is updated."""
    entries = [
        (gi, j, p)
        for gi, group in enumerate(opt.param_groups)
        for j, p in enumerate(group["params"])
        if p.grad is not None and not p.grad.is_sparse
    ]
    if not entries:
        return
    if _compiling():  # no host read while Dynamo traces: a device assertion
        _assert_finite_async([p.grad for _, _, p in entries], type(opt).__name__)
        return
    i = _first_nonfinite([p.grad for _, _, p in entries])
    if i is not None:
        gi, j, p = entries[i]
        state = opt.state.get(p)
        t = int(state["step"]) if state and "step" in state else 0
        raise _nonfinite_error(type(opt).__name__, f"param_groups[{gi}]['params'][{j}]", p, p.grad, t)


class _GroupParamNames(Sequence[str]):
    """Names ``param_groups[g]['params'][j]`` of the parameters a class passes to
    :func:`lm_adagrad`, computed only when an error message needs one."""

    def __init__(self, opt: OptimizerBase, group: dict[str, Any], params: list[Tensor]) -> None:
        self._opt, self._group, self._params = opt, group, params

    def __len__(self) -> int:
        return len(self._params)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        p = self._params[i]
        gi = next(n for n, g in enumerate(self._opt.param_groups) if g is self._group)
        j = next(n for n, q in enumerate(self._group["params"]) if q is p)
        return f"param_groups[{gi}]['params'][{j}]"


class LMAdagrad(OptimizerBase):
    r"""Limited-memory full-matrix AdaGrad: whiten the gradient with the last ``k`` gradients.

    For every parameter tensor (flattened to a vector of length :math:`d`),
    with :math:`\eta` ``lr``, :math:`k` ``history_size``, :math:`\epsilon`
    ``eps``, :math:`\lambda` ``weight_decay``, :math:`x_t` the parameter after
    :math:`t` steps and :math:`g_t = \nabla f(x_t)` its gradient (:math:`t = 0,
    1, \dots`; after this step the optimizer has seen :math:`t+1` gradients),
    one step with the extras at their defaults does

    .. math::

        g_t &\leftarrow g_t + \lambda x_t
               \qquad (\text{coupled weight decay, the default}) \\
        M_t &= [g_{t-n+1}, \dots, g_t] \in \mathbb{R}^{d\times n},
               \qquad n = \min(t+1, k) \\
        M_t^\top M_t &= V S^2 V^\top
               \qquad (\text{Gram matrix, } n\times n,\ S = \mathrm{diag}(s_i)) \\
        U &= M_t V S^{-1} \qquad (\text{left singular vectors of } M_t) \\
        u_t &= U\,(S^2 + \epsilon)^{-1/2}\,U^\top g_t
             = M_t V\,\mathrm{diag}\bigl(s_i^{-2}(s_i^2+\epsilon)^{-1/2}\bigr)\,V^\top M_t^\top g_t \\
        x_{t+1} &= x_t - \eta\, u_t

    (with ``decoupled_weight_decay=True`` the first line is dropped and the
    last is :math:`x_{t+1} = (1-\eta\lambda)\,x_t - \eta\, u_t`). The
    regularised singular values are :math:`\sqrt{S^2+\epsilon}`: the
    regulariser acts on :math:`A = M_tM_t^\top`, as in full-matrix AdaGrad.
    Without centering the update equals full-matrix AdaGrad restricted to the
    window, :math:`(M_tM_t^\top + \epsilon I)^{-1/2} g_t` (see
    :class:`FullMatrixAdagrad` with the same ``history_size``), because
    :math:`g_t` lies in the span of the window, and its length is below 1.

    Conventions:

    * **Gram route.** :math:`U` and :math:`S` come from the eigendecomposition
      of the :math:`n\times n` Gram matrix, not from an SVD of the
      :math:`d\times n` history: :math:`O(dk + k^3)` work per step (only
      the new gradient's row of the Gram matrix is computed), no special SVD
      driver, identical code on CPU and CUDA. The Gram matrix, :math:`M^\top v`
      and :math:`M a` are accumulated in float64 whatever the parameters' dtype
      (products of float32 numbers are exact in float64; a float32 Gram matrix
      would lose the small eigenvalues), and the :math:`n\times n`
      eigenproblem is solved on the CPU in float64. Eigenvalues below
      ``10 * n * finfo(float64).eps * trace(M^T M)`` are treated as zero: their
      directions are dropped, as a pseudo-inverse drops tiny singular values.
      This makes degenerate histories (repeated or zero gradients,
      :math:`d < k`) well defined.
    * **Centering** (``centered=True``) subtracts the mean of the window's
      columns from each column (ZCA whitening). The centred window has rank
      at most :math:`n-1` and :math:`g_t` leaves its span; the component of
      :math:`g_t` outside it (mostly the mean gradient) is **dropped**, so the
      first step, and any step with a constant gradient, does not move.
    * **Momentum** (``momentum`` :math:`\beta`, an Adam-like bias-corrected
      EMA :math:`m_t = \beta m_{t-1} + (1-\beta) v_t`, :math:`\hat m_t =
      m_t/(1-\beta^{t+1})`, the exponent being the number of gradients seen,
      with :math:`v_t` the gradient or the update): ``momentum_mode="gradient"`` averages the gradients
      and whitens :math:`\hat m_t` (the history still holds raw gradients);
      ``"update"`` whitens :math:`g_t` and averages the updates (LaProp-like).
    * **Update norm** (``update_norm``): with :math:`\rho_t = \gamma \rho_{t-1} +
      (1-\gamma)\lVert u_t\rVert` the EMA of the unclipped update norms
      (:math:`\rho_0 = \lVert u_0\rVert`, :math:`\gamma` ``update_norm_beta``),
      ``"clip"`` rescales :math:`u_t` to norm at most :math:`\rho_{t-1}` and
      ``"graft"`` to norm exactly :math:`\rho_{t-1}` (from the second step on). It acts on
      the whitened direction, before update momentum.
    * **Weight decay**: coupled (``decoupled_weight_decay=False``,
      :math:`g_t + \lambda x_t` enters the history) or decoupled
      (:math:`x \leftarrow x(1-\eta\lambda)`, as AdamW).
    * **Concatenation** (``concatenate=True``): all parameters of a param
      group with a gradient form one vector (interactions between layers are
      whitened too); by default each tensor is whitened on its own.
    * Complex parameters are treated as real vectors of twice the length:
      every operation acts on the ``view_as_real`` view, so a complex
      parameter and its real twin follow bit-identical trajectories (both
      paths, every option).
    * **Non-finite gradients.** Every entry of :math:`u_t` depends on every
      entry of :math:`g_t`, so a NaN or infinite entry cannot stay local (as
      it does in ``torch.optim``'s element-wise methods): it would turn the
      whole tensor to NaN and stay in the window for :math:`k` steps. Before
      touching anything, :meth:`step` checks the gradients of all param
      groups (one norm per tensor, ``torch._foreach_norm``, and one host read
      per device) and raises :class:`FloatingPointError` naming the parameter
      (``param_groups[i]['params'][j]``), its shape and dtype, the count of
      NaN and infinite entries, the first one's index and the step
      :math:`t`. Parameters and state are then exactly as before the call:
      catch the error to skip the step (as ``torch.amp.GradScaler`` skips
      steps with infinite gradients) and the run continues as if the bad
      gradient had never come.
    * **torch.compile.** :meth:`step` compiles to one graph, with no graph
      break and no recompilation while the window fills and wraps: while
      Dynamo traces, both paths run one implementation whose shapes do not
      depend on the step. The counter stays a 0-dim tensor (ring position
      ``step % k``, the number of filled slots :math:`n = \min(t+1, k)` and
      the momentum bias corrections are tensor arithmetic), the gradient is
      written with ``index_copy_``, and the whole :math:`k\times k` problem
      is solved with the empty slots masked: their rows of the window and of
      the Gram matrix are zero and add nothing to :math:`M^\top M`, their
      zero eigenvalues fall below the cut-off (which uses :math:`n`, as
      eagerly), centering uses :math:`I-\mathbf{1}\mathbf{1}^\top/n` on the
      filled slots only, and their coefficients are zero. The result is the
      eager one to round-off (the eager path itself is unchanged). The small
      eigenproblem is then solved on the parameters' device, without the
      host transfer. A host read being a graph break, the non-finite check
      is a device assertion (``torch._assert_async``) that every gradient is
      finite: it raises ``RuntimeError`` (not :class:`FloatingPointError`)
      with a message that cannot name the parameter or the step (run the
      step eagerly to get them). The assertion comes before every write in
      the traced graph, and with ``aot_eager``, which applies the writes
      after the graph, nothing is changed (tested). Inductor may schedule an
      in-place write before it: on the CPU the parameters, counters, Gram
      matrices and momentum were found unchanged, but the window's slot for
      this step held the rejected gradient. That slot is the one the next
      step overwrites before reading it (the counter did not advance), so
      training continues as if the gradient had never come; this is what
      inductor's schedule gave, not a guarantee. For the guarantee and the
      detailed :class:`FloatingPointError`, check the gradients outside the
      compiled region or step eagerly. On CUDA a failed device assertion is
      fatal to the process's CUDA context. The Gram-matrix overflow check and, with
      ``concatenate=True``, the equal-step-count check are device assertions
      too. Sharded (DTensor) parameters keep the eager implementation, with
      its host reads and all-reduces, also under ``torch.compile`` (where
      these are graph breaks; this combination is not tested).

    * **Sharded parameters** (DTensors, as FSDP2's ``fully_shard`` makes
      them, sharded with ``Shard(d)`` or replicated): each rank keeps the
      window of its own shard (``history`` is a DTensor sharded like the
      parameter, one dimension further), computes its shard's part of the
      new Gram row :math:`M_r^\top g_r` (and of :math:`M_r^\top \hat m_r`
      with gradient momentum), and one all-reduce per step sums them over the
      ranks for all tensors at once: :math:`k` float64 numbers per tensor
      (:math:`2k` with gradient momentum), the Gram matrix being kept up to
      date one row per step. Every rank then solves the same :math:`k\times
      k` problem and applies the coefficients to its rows,
      :math:`u_r = M_r a`: the step equals the single-process step on the
      whole tensor, in per-tensor and concatenated mode alike. Update norms
      (``update_norm``) are summed over the ranks the same way, and the
      non-finite check adds one all-reduce of one number, so that every rank
      raises if any shard has a NaN or infinite entry.

    Memory: the history, :math:`k` floats per parameter element (in the
    parameter's dtype), plus one more with momentum, and a :math:`k\times k`
    float64 Gram matrix per tensor. A state that, with one step's work
    buffers, exceeds the memory of its device (the machine's RAM for CPU
    tensors, the GPU's total memory for CUDA ones; devices of unknown size
    are not checked) is refused before anything is allocated, with a
    ``ValueError`` giving the bytes it would need: by the constructor, by
    :meth:`add_param_group`, and at a parameter's first step (if
    ``history_size`` was raised since). ``history_size=10**9`` thus fails at
    construction, not in the first step's allocation.

    State per parameter: ``step`` (0-dim CPU tensor, the number of gradients
    seen), ``history`` (ring buffer of shape ``(k, *p.shape)``; slot
    ``(step - 1) % k`` holds the newest gradient), ``gram`` (float64
    ``(k, k)``, the Gram matrix of the slots, one row refreshed per step so
    that the :math:`d`-dimensional work is :math:`O(dk)`), ``momentum_buffer`` (with
    momentum) and ``update_norm_avg`` (0-dim, with ``update_norm``).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0` (default: 1e-2).
        history_size: window length :math:`k \ge 1` (default: 10).
        eps: :math:`\epsilon \ge 0`, added to the squared singular values (default: 1e-6).
        centered: centre the window before whitening (default: False).
        weight_decay: :math:`\lambda \ge 0` (default: 0).
        momentum: :math:`\beta \in [0, 1)` (default: 0).
        momentum_mode: ``"gradient"`` (Adam-like) or ``"update"`` (LaProp-like).
        update_norm: ``None``, ``"clip"`` or ``"graft"`` (default: None).
        update_norm_beta: :math:`\gamma \in [0, 1)` (default: 0.9).
        decoupled_weight_decay: AdamW-style decay (default: False).
        concatenate: whiten all parameters of a group as one vector (default: False).
        maximize: maximize the objective (default: False).
        foreach: ``True`` moves the small eigenproblems of all parameters to
            the host in one transfer and uses ``torch._foreach_*`` for the
            element-wise work (default: None = True for plain tensors on CUDA
            and other accelerators, False on the CPU, as in ``torch.optim``).
            The :math:`k\times k` problems are always solved on the CPU in float64.
        differentiable, fused: not supported (must be False / None).

    References:
        Duchi, Hazan & Singer (2011), full-matrix AdaGrad; Agarwal et al. (2019),
        GGT (the Gram-matrix route is its Section 3; GGT itself stores momentum
        vectors, averages instead of summing and regularises differently);
        Kessy, Lewin & Strimmer (2018), ZCA whitening; Ziyin et al. (2020), LaProp.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = LMAdagrad(model.parameters(), lr=0.1, history_size=5)
        >>> model(torch.ones(4, 3)).sum().backward()
        >>> opt.step()
    """

    _group_fallbacks = {
        "centered": False,
        "momentum": 0.0,
        "momentum_mode": "gradient",
        "update_norm": None,
        "update_norm_beta": 0.9,
        "decoupled_weight_decay": False,
        "concatenate": False,
        "fused": None,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        history_size: int = 10,
        eps: float = 1e-6,
        centered: bool = False,
        weight_decay: float = 0,
        momentum: float = 0,
        *,
        momentum_mode: str = "gradient",
        update_norm: str | None = None,
        update_norm_beta: float = 0.9,
        decoupled_weight_decay: bool = False,
        concatenate: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        _check_lr(lr)
        _check_history_size(history_size)
        _check_nonnegative("eps", eps)
        _check_flag("centered", centered)
        _check_nonnegative("weight_decay", weight_decay)
        _check_range("momentum", momentum, 0.0, 1.0, hi_closed=False)
        if momentum_mode not in _MOMENTUM_MODES:
            raise ValueError(
                f"Invalid momentum_mode: {momentum_mode!r} (must be 'gradient' or 'update')"
            )
        if update_norm not in _UPDATE_NORMS:
            raise ValueError(
                f"Invalid update_norm: {update_norm!r} (must be None, 'clip' or 'graft')"
            )
        _check_range("update_norm_beta", update_norm_beta, 0.0, 1.0, hi_closed=False)
        _check_flag("decoupled_weight_decay", decoupled_weight_decay)
        _check_flag("concatenate", concatenate)
        _check_no_differentiable("LMAdagrad", differentiable)
        _check_impl_flags("LMAdagrad", foreach=foreach, fused=fused)
        defaults = dict(
            lr=lr,
            history_size=int(history_size),
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            momentum=momentum,
            momentum_mode=momentum_mode,
            update_norm=update_norm,
            update_norm_beta=update_norm_beta,
            decoupled_weight_decay=decoupled_weight_decay,
            concatenate=concatenate,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    _MEMORY_ADVICE = (
        "Lower history_size: the window holds k values per parameter entry and the Gram "
        "matrix k^2 float64 numbers per tensor"
    )

    def _check_new_group(self, index: int, group: dict[str, Any]) -> None:
        """Refuse (``ValueError``, with the number of bytes) a state that cannot fit in the
        device's memory."""
        _check_state_memory(type(self).__name__, self.param_groups, _lm_state_bytes,
                            self._MEMORY_ADVICE)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": _new_step(),
            "history": _history_like(p, group["history_size"]),
            # Gram matrix of the ring buffer's slots, kept up to date one row per step
            "gram": torch.zeros((group["history_size"],) * 2, dtype=torch.float64, device=p.device),
        }
        if group["momentum"] != 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["update_norm"] is not None:
            state["update_norm_avg"] = torch.zeros((), dtype=_real(p).dtype, device=p.device)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, keeping ``gram`` in float64.

        torch casts every floating-point state tensor to its parameter's dtype;
        the Gram matrix must stay float64 (its small eigenvalues are the
        information), so it is set aside and restored after loading.
        """
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        grams = {
            p: state_dict["state"][i]["gram"]
            for i, p in zip(saved_ids, params)
            if i in state_dict["state"] and "gram" in state_dict["state"][i]
        }
        super().load_state_dict(state_dict)
        for p, gram in grams.items():
            self.state[p]["gram"] = gram.to(device=p.device, dtype=torch.float64, copy=True)

    def _step_group(self, group: dict[str, Any]) -> None:
        if group is self.param_groups[0]:  # every group's gradients, before any update
            if any(_is_dtensor(p) for g in self.param_groups for p in g["params"]):
                _check_finite_sharded_grads(self)
            else:
                _check_finite_grads(self)
        params, grads, _, _ = self._gather(group)
        if not params:
            return
        if any(not self.state.get(p) for p in params):  # new state: check before allocating
            _check_state_memory(type(self).__name__, self.param_groups, _lm_state_bytes,
                                self._MEMORY_ADVICE)
        states = [self._lazy_state(p, group) for p in params]
        for p, s in zip(params, states):  # options switched on after the state was created
            if group["momentum"] != 0 and "momentum_buffer" not in s:
                s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["update_norm"] is not None and "update_norm_avg" not in s:
                s["update_norm_avg"] = torch.zeros((), dtype=_real(p).dtype, device=p.device)
        names = _GroupParamNames(self, group, params)
        shard_groups = None
        if any(_is_dtensor(p) for p in params):  # FSDP2: each rank whitens its shards
            shard_groups = [_shard_groups(p) for p in params]
            params, grads = [_local(p) for p in params], [_local(g) for g in grads]
        lm_adagrad(
            params,
            grads,
            [_local(s["history"]) for s in states],
            [s["step"] for s in states],
            [None if s.get("momentum_buffer") is None else _local(s["momentum_buffer"]) for s in states],
            [s.get("update_norm_avg") for s in states],
            grams=[s["gram"] for s in states],
            lr=group["lr"],
            eps=group["eps"],
            centered=group["centered"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            momentum_mode=group["momentum_mode"],
            update_norm=group["update_norm"],
            update_norm_beta=group["update_norm_beta"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            concatenate=group["concatenate"],
            maximize=group["maximize"],
            foreach=group["foreach"],
            check_finite=False,  # checked above for all groups at once
            param_names=names,
            shard_groups=shard_groups,
        )


class FullMatrixAdagrad(OptimizerBase):
    r"""Exact full-matrix AdaGrad, for small parameter tensors (the reference for :class:`LMAdagrad`).

    For every parameter tensor flattened to length :math:`d`, with
    :math:`g_t = \nabla f(x_t) + \lambda x_t` (:math:`\lambda` ``weight_decay``):

    .. math::

        A_t &= \sum_{s \in W_t} g_s g_s^\top \qquad (d\times d) \\
        x_{t+1} &= x_t - \eta\,(A_t + \epsilon I)^{-1/2} g_t

    where :math:`W_t` is every step so far (``history_size=None``, Duchi et
    al. 2011) or the last :math:`k` steps (``history_size=k``, the matrix that
    :class:`LMAdagrad` whitens with). The inverse square root comes from a
    float64 eigendecomposition of :math:`A_t`: :math:`O(d^2)` memory and
    :math:`O(d^3)` work per step. With ``eps=0`` zero eigenvalues are dropped
    (pseudo-inverse) instead of giving infinities.

    Hard cases, as in :class:`LMAdagrad`: a gradient with a NaN or infinite
    entry raises :class:`FloatingPointError` naming the parameter and the
    step :math:`t`, before anything is modified (rather than a
    ``linalg.eigh`` convergence failure); so does a sum :math:`A_t` that
    overflows its dtype (float16 overflows for :math:`|g| > 256`); if the
    eigendecomposition itself fails, the ``LinAlgError`` names the parameter
    and the step. A state that cannot fit in the device's memory (:math:`d^2`
    numbers per tensor, plus the float64 :math:`d\times d` matrix and its
    eigenvectors during a step) is refused at construction with a
    ``ValueError`` giving the bytes. DTensor parameters (FSDP2's
    ``fully_shard``) are refused at construction with a ``TypeError``:
    :math:`A_t` couples every entry of a tensor with every other, across
    shards.

    Under ``torch.compile`` the step is one graph as in :class:`LMAdagrad`
    (the window's empty slots are zero rows, which add nothing to :math:`A_t`);
    the non-finite and overflow checks are device assertions that raise
    ``RuntimeError`` without naming the parameter, and an eigendecomposition
    failure is torch's own ``LinAlgError``.

    State per parameter: ``step``, and ``sum`` (:math:`A_t`, shape ``(d, d)``)
    or ``history`` (``(k, *p.shape)``, as in :class:`LMAdagrad`).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0` (default: 1e-2).
        eps: :math:`\epsilon \ge 0` (default: 1e-6).
        history_size: ``None`` (all steps) or a window :math:`k \ge 1` (default: None).
        weight_decay: coupled L2 penalty :math:`\lambda \ge 0` (default: 0).
        maximize, foreach: as in :class:`LMAdagrad`.
        differentiable, fused: not supported.
    """

    _group_fallbacks = {"history_size": None, "fused": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        eps: float = 1e-6,
        history_size: int | None = None,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        _check_lr(lr)
        _check_nonnegative("eps", eps)
        _check_history_size(history_size, allow_none=True)
        _check_nonnegative("weight_decay", weight_decay)
        _check_no_differentiable("FullMatrixAdagrad", differentiable)
        _check_impl_flags("FullMatrixAdagrad", foreach=foreach, fused=fused)
        defaults = dict(
            lr=lr,
            eps=eps,
            history_size=None if history_size is None else int(history_size),
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    _MEMORY_ADVICE = (
        "Full-matrix AdaGrad keeps a d x d matrix per tensor of d entries: use it for small "
        "tensors only, and LMAdagrad for large ones"
    )

    def _check_new_group(self, index: int, group: dict[str, Any]) -> None:
        """Refuse DTensor parameters (``TypeError``) and a state that cannot fit in the
        device's memory (``ValueError``, with the number of bytes)."""
        _check_no_dtensor(type(self).__name__, index, group["params"],
                          "the d x d matrix A_t couples every entry of a tensor with every other, "
                          "across shards")
        _check_state_memory(type(self).__name__, self.param_groups, _full_state_bytes,
                            self._MEMORY_ADVICE)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        k = group["history_size"]
        if k is None:
            d = _real(p).numel()
            return {"step": _new_step(), "sum": torch.zeros((d, d), dtype=_real(p).dtype, device=p.device)}
        return {"step": _new_step(), "history": torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device)}

    def _step_group(self, group: dict[str, Any]) -> None:
        if group is self.param_groups[0]:  # every group's gradients, before any update
            _check_finite_grads(self)
        params, grads, _, _ = self._gather(group)
        if not params:
            return
        if any(not self.state.get(p) for p in params):  # new state: check before allocating
            _check_state_memory(type(self).__name__, self.param_groups, _full_state_bytes,
                                self._MEMORY_ADVICE)
        states = [self._lazy_state(p, group) for p in params]
        windowed = group["history_size"] is not None
        lm_adagrad(
            params,
            grads,
            [s["history" if windowed else "sum"] for s in states],
            [s["step"] for s in states],
            [None] * len(params),
            [None] * len(params),
            lr=group["lr"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            foreach=group["foreach"],
            exact=True,
            accumulate=not windowed,
            check_finite=False,  # checked above for all groups at once
            param_names=_GroupParamNames(self, group, params),
        )


# --------------------------------------------------------------------------- #
# The functional core                                                          #
# --------------------------------------------------------------------------- #


def lm_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    histories: list[Tensor],
    state_steps: list[Tensor],
    momentum_buffers: list[Tensor | None],
    update_norm_avgs: list[Tensor | None],
    *,
    lr: float | Tensor = 1e-2,
    eps: float = 1e-6,
    centered: bool = False,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    momentum_mode: str = "gradient",
    update_norm: str | None = None,
    update_norm_beta: float = 0.9,
    decoupled_weight_decay: bool = False,
    concatenate: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
    grams: list[Tensor] | None = None,
    exact: bool = False,
    accumulate: bool = False,
    check_finite: bool = True,
    param_names: Sequence[str] | None = None,
    shard_groups: Sequence[tuple[Any, ...]] | None = None,
) -> None:
    r"""Functional LM-Adagrad: update ``params`` and the state lists in place.

    See :class:`LMAdagrad` for the equations. ``histories`` are ring buffers of
    shape ``(k, *p.shape)``; ``state_steps`` count the gradients seen.
    ``grams`` are the float64 ``(k, k)`` Gram matrices of the ring buffers
    (required unless ``exact``); one row and column is refreshed per step.
    ``exact=True`` replaces the windowed whitening by the exact
    :math:`(A+\epsilon I)^{-1/2} g` of :class:`FullMatrixAdagrad`; with
    ``accumulate=True`` the ``histories`` entries are then the running sums
    :math:`A` of shape ``(d, d)``.

    ``check_finite=True`` raises :class:`FloatingPointError` before touching
    anything if a gradient has a NaN or infinite entry (see :class:`LMAdagrad`;
    the classes check all their param groups at once and pass False).
    ``param_names`` name the parameters in error messages (default:
    ``params[i]``).

    ``shard_groups[i]``, if given and not empty, says that ``params[i]`` (and
    its gradient and state) is one rank's shard of a larger tensor, and names
    the process groups over which the shards are summed: the Gram rows,
    :math:`M^\top v` and update norms of the shards are then all-reduced over
    them (see :class:`LMAdagrad`; the class derives them from DTensor
    placements). With ``check_finite``, only the local shards are checked.
    """
    if exact and shard_groups is not None and any(shard_groups):
        raise ValueError("exact=True (FullMatrixAdagrad) does not support sharded parameters")
    names: Sequence[str] = param_names if param_names is not None else _IndexNames(len(params))
    sharded = shard_groups is not None and any(shard_groups)
    if check_finite and _compiling() and not sharded:
        _assert_finite_async(grads, "lm_adagrad")
    elif check_finite:
        i = _first_nonfinite(grads)
        if i is not None:
            raise _nonfinite_error("lm_adagrad", names[i], params[i], grads[i], int(state_steps[i]))
    if exact and (centered or momentum != 0 or update_norm is not None or concatenate):
        raise ValueError("exact=True supports no centering, momentum, update_norm or concatenate")
    if not exact and grams is None:
        raise ValueError("grams (the (k, k) float64 Gram matrices of the histories) are required")
    impl = _resolve_impl(params, foreach)
    if _compiling() and not sharded:
        # both paths: one traced step with fixed shapes and no host read
        _compiled_lm_adagrad(
            params, grads, histories, state_steps, momentum_buffers, update_norm_avgs,
            grams if grams is not None else [None] * len(params),
            lr=_as_float(lr), eps=float(eps), centered=centered,
            weight_decay=_as_float(weight_decay), momentum=float(momentum),
            momentum_mode=momentum_mode, update_norm=update_norm,
            update_norm_beta=float(update_norm_beta), decoupled_weight_decay=decoupled_weight_decay,
            concatenate=concatenate, maximize=maximize, exact=exact, accumulate=accumulate,
            names=names,
        )
        return
    func = _multi_tensor_lm_adagrad if impl == "foreach" else _single_tensor_lm_adagrad
    func(
        params,
        grads,
        histories,
        state_steps,
        momentum_buffers,
        update_norm_avgs,
        grams if grams is not None else [None] * len(params),
        lr=_as_float(lr),
        eps=float(eps),
        centered=centered,
        weight_decay=_as_float(weight_decay),
        momentum=float(momentum),
        momentum_mode=momentum_mode,
        update_norm=update_norm,
        update_norm_beta=float(update_norm_beta),
        decoupled_weight_decay=decoupled_weight_decay,
        concatenate=concatenate,
        maximize=maximize,
        exact=exact,
        accumulate=accumulate,
        names=names,
        shard_groups=shard_groups,
    )


class _IndexNames(Sequence[str]):
    """``params[0]``, ``params[1]``, ...: the default names in error messages."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        if not 0 <= i < self._n:
            raise IndexError(i)
        return f"params[{i}]"


def _whitening_coefficients(G: Tensor, c: Tensor, eps: float, centered: bool, rtol: Tensor) -> Tensor:
    r"""Solve the small problem: coefficients :math:`a` with :math:`u = M a`.

    ``G`` (..., n, n) is the Gram matrix :math:`M^\top M` and ``c`` (..., n) is
    :math:`M^\top v` (float64). With :math:`V\Lambda V^\top` the
    eigendecomposition of the (centred) Gram matrix,
    :math:`a = V\,\mathrm{diag}(\lambda^{-1}(\lambda+\epsilon)^{-1/2})\,V^\top c`,
    directions with :math:`\lambda_i \le \mathrm{rtol}\cdot\mathrm{tr}(M^\top M)` dropped.
    Centering multiplies by :math:`C = I - \mathbf{1}\mathbf{1}^\top/n` on both sides.
    """
    n = G.shape[-1]
    # the cut-off is relative to the scale of the uncentred window, trace(M^T M):
    # round-off in the centred Gram matrix is relative to that scale, not to its own
    scale = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1, keepdim=True).clamp(min=0)
    if centered:
        C = torch.eye(n, dtype=G.dtype, device=G.device) - 1.0 / n
        G = C @ G @ C
        c = (C @ c.unsqueeze(-1)).squeeze(-1)
    lam, V = torch.linalg.eigh(G)  # ascending eigenvalues
    keep = lam > rtol.unsqueeze(-1) * scale
    lam_safe = torch.where(keep, lam, torch.ones_like(lam))
    w = torch.where(keep, 1.0 / (lam_safe * torch.sqrt(lam_safe + eps)), torch.zeros_like(lam))
    a = (V @ (w * (V.transpose(-1, -2) @ c.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
    if centered:
        a = (C @ a.unsqueeze(-1)).squeeze(-1)
    return a


def _solve_small(Gs: list[Tensor], cs: list[Tensor], rtols: list[float], eps: float,
                 centered: bool) -> list[Tensor]:
    """Whitening coefficients for several blocks with one device-to-host transfer.

    The n x n problems are tiny, so they are solved on the CPU in float64, one
    LAPACK call each, whatever the parameters' device: one synchronisation per
    call of this function (none on CPU), and the same numbers on CPU and CUDA
    and in the single- and multi-tensor paths.
    """
    device = Gs[0].device
    sizes = [G.shape[-1] for G in Gs]
    flat = torch.cat([torch.cat([G.reshape(-1), c]) for G, c in zip(Gs, cs)]).cpu()
    if not bool(torch.isfinite(flat).all()):  # free: the numbers are on the host already
        raise FloatingPointError(
            "LMAdagrad: the float64 Gram matrix M^T M or M^T v overflowed (finite gradient "
            "entries above about 1e154 in float64 parameters, or non-finite parameters with "
            "coupled weight decay); the history now holds them. Scale the loss down"
        )
    out, pos = [], 0
    for n, rtol in zip(sizes, rtols):
        G = flat[pos:pos + n * n].reshape(1, n, n)
        c = flat[pos + n * n:pos + n * n + n].reshape(1, n)
        pos += n * n + n
        rt = torch.full((1,), rtol, dtype=torch.float64)
        out.append(_whitening_coefficients(G, c, eps, centered, rt)[0])
    if device.type == "cpu":
        return out
    back = torch.cat(out).to(device, non_blocking=True)
    return list(torch.split(back, sizes))


def _exact_direction(A: Tensor, v: Tensor, eps: float) -> Tensor:
    r""":math:`(A + \epsilon I)^{-1/2} v` from a float64 eigendecomposition of the d x d matrix ``A``."""
    mu, Q = torch.linalg.eigh(A.to(torch.float64))
    mu = mu.clamp(min=0)
    if eps > 0:
        w = 1.0 / torch.sqrt(mu + eps)
    else:  # pseudo-inverse square root
        keep = mu > _RTOL_FACTOR * mu.numel() * torch.finfo(torch.float64).eps * mu[-1]
        w = torch.where(keep, 1.0 / torch.sqrt(torch.where(keep, mu, torch.ones_like(mu))), torch.zeros_like(mu))
    return (Q @ (w * (Q.T @ v.to(torch.float64)))).to(v.dtype)


def _blocks(n_params: int, concatenate: bool, counts: list[int] | None = None) -> list[list[int]]:
    """Indices of the parameters whitened together.

    With ``concatenate`` the slots of all histories must hold the same steps,
    so every parameter must have seen the same number of gradients.
    """
    if not concatenate:
        return [[i] for i in range(n_params)]
    if counts is not None and len(set(counts)) > 1:
        raise RuntimeError(
            "LMAdagrad(concatenate=True) needs every parameter of a group to get a gradient at "
            f"every step, but their step counts differ ({sorted(set(counts))}); use "
            "concatenate=False or put parameters that are sometimes frozen in another group"
        )
    return [list(range(n_params))]


def _flat(t: Tensor) -> Tensor:
    return _real(t).reshape(-1)


def _flat_history(h: Tensor, n: int) -> Tensor:
    """The first ``n`` slots of a ring buffer, real, as an (n, d) matrix."""
    r = _real(h[:n])
    return r.reshape(n, r[0].numel() if n else 0)  # (a rank's shard may be empty: d = 0)


def _insert(histories: list[Tensor], grads: list[Tensor], counts: list[int], accumulate: bool,
            names: Sequence[str]) -> None:
    """Put ``g_t`` into slot ``count % k`` of each ring buffer (or add ``g g^T`` to ``A``).

    The sums ``A`` are computed aside and stored only if all are finite (a
    float16 or float32 sum can overflow with finite gradients): on overflow
    ``FloatingPointError`` is raised and nothing is modified.
    """
    if accumulate:
        sums = []
        for i, (h, g) in enumerate(zip(histories, grads)):
            gf = _flat(g)
            A = torch.addr(h, gf, gf)  # A_t = A_{t-1} + g_t g_t^T
            if not bool(torch.isfinite(A).all()):
                raise FloatingPointError(
                    f"FullMatrixAdagrad: the sum A_t of g g^T of {names[i]} overflows {A.dtype} "
                    f"at step t = {counts[i]} (largest |g| entry {float(gf.abs().max()):.3g}). "
                    "Nothing was updated; use a wider dtype for this parameter or scale the loss down"
                )
            sums.append(A)
        for h, A in zip(histories, sums):
            h.copy_(A)
        return
    for h, g, c in zip(histories, grads, counts):
        h[c % h.shape[0]].copy_(g)


#: columns of a low-precision window converted to float64 at a time: small
#: enough for the CPU cache, which makes the conversion nearly free; on other
#: devices larger chunks (fewer kernel launches) are used
_CHUNK = 1 << 14
_CHUNK_ACCELERATOR = 1 << 20


def _chunk(device: torch.device) -> int:
    return _CHUNK if device.type == "cpu" else _CHUNK_ACCELERATOR


def _matvec64(M: Tensor, x: Tensor) -> Tensor:
    """``M @ x`` for an (n, d) window, accumulated in float64.

    Products of two float32 (or bfloat16) numbers are exact in float64, so the
    Gram matrix of a low-precision window keeps its small eigenvalues (a
    float32 Gram matrix loses those below about 1e-7 of the largest). Windows
    that are not float64 are converted ``_CHUNK`` columns at a time into a
    reused buffer.
    """
    if M.dtype == torch.float64:
        return M @ x.to(torch.float64)
    n, d = M.shape
    chunk = _chunk(M.device)
    out = torch.zeros(n, dtype=torch.float64, device=M.device)
    Mb = torch.empty((n, min(d, chunk)), dtype=torch.float64, device=M.device)
    xb = torch.empty(min(d, chunk), dtype=torch.float64, device=M.device)
    for lo in range(0, d, chunk):
        w = min(chunk, d - lo)
        Mb[:, :w].copy_(M[:, lo:lo + w])
        xb[:w].copy_(x[lo:lo + w])
        out.addmv_(Mb[:, :w], xb[:w])
    return out


def _gram_systems(blocks: list[list[int]], ts: list[int], histories: list[Tensor],
                  grams: Sequence[Tensor], gs: list[Tensor], vs: list[Tensor], counts: list[int],
                  shard_groups: Sequence[tuple[Any, ...]] | None) -> list[tuple[Tensor, Tensor]]:
    r"""Refresh row and column ``slot`` of each Gram matrix; return, per block,
    ``G = sum_i M_i^T M_i`` and ``c = sum_i M_i^T v_i`` (float64).

    The new gradient only changes the entries that involve its slot:
    :math:`G_{j,\text{slot}} = G_{\text{slot},j} = g_j^\top g_t`, one product
    :math:`M^\top g_t` (:math:`O(dk)`), which is also :math:`c` when the
    whitened vector is :math:`g_t` itself.

    Sharded parameters (``shard_groups[i]`` not empty): each rank computes the
    products of its own shard, and one all-reduce per set of process groups
    sums the new rows and the :math:`M^\top v` of all parameters (:math:`n`
    numbers per tensor, :math:`2n` with gradient momentum), so that every rank
    holds the Gram matrix and right-hand side of the whole tensor.
    """
    rows: list[Tensor | None] = [None] * len(histories)
    cis: list[Tensor | None] = [None] * len(histories)
    for b, t in zip(blocks, ts):
        n = min(t, histories[b[0]].shape[0])
        for i in b:
            M = _flat_history(histories[i], n)
            rows[i] = _matvec64(M, _flat(gs[i]))  # g_j^T g_t for the n active slots
            if vs[i] is not gs[i]:
                cis[i] = _matvec64(M, _flat(vs[i]))
    if shard_groups is not None and any(shard_groups):
        _all_reduce_sums(rows, shard_groups)
        if any(c is not None for c in cis):
            _all_reduce_sums(cis, shard_groups)
    out = []
    for b, t in zip(blocks, ts):
        k = histories[b[0]].shape[0]
        n, slot = min(t, k), counts[b[0]] % k
        G: Tensor | None = None
        c: Tensor | None = None
        for i in b:
            row, gram, ci = cast(Tensor, rows[i]), grams[i], cis[i]  # rows: set above for every i
            gram[slot, :n] = row
            gram[:n, slot] = row
            if ci is None:
                ci = row
            G = gram[:n, :n].clone() if G is None else G + gram[:n, :n]
            c = ci if c is None else c + ci
        out.append((cast(Tensor, G), cast(Tensor, c)))  # set: a block has at least one parameter
    return out


def _combine(histories: list[Tensor], a: Tensor, n: int, like: list[Tensor]) -> list[Tensor]:
    """``u_i = M_i a`` accumulated in float64 (the coefficients may cancel),
    stored in the parameter's dtype."""
    out = []
    a = a.to(torch.float64)
    for h, p in zip(histories, like):
        M = _flat_history(h, n)
        if M.dtype == torch.float64:
            u = a @ M
        else:
            d = M.shape[1]
            chunk = _chunk(M.device)
            u = torch.empty(d, dtype=M.dtype, device=M.device)
            Mb = torch.empty((n, min(d, chunk)), dtype=torch.float64, device=M.device)
            for lo in range(0, d, chunk):
                w = min(chunk, d - lo)
                Mb[:, :w].copy_(M[:, lo:lo + w])
                u[lo:lo + w].copy_(a @ Mb[:, :w])
        out.append(u.reshape(_real(p).shape))
    return out


def _rtol(histories: list[Tensor], n: int) -> float:
    """Relative eigenvalue cut-off for a window of ``n`` gradients (float64 Gram matrix)."""
    return _RTOL_FACTOR * n * torch.finfo(torch.float64).eps


def _block_norm(us: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Euclidean norm of the concatenation of ``us`` (a 0-dim tensor, no sync)."""
    norms = [torch.linalg.vector_norm(u).to(dtype) for u in us]
    return norms[0] if len(norms) == 1 else torch.sqrt(sum(x * x for x in norms))


def _block_norms(blocks: list[list[int]], us: list[Tensor], dtypes: list[torch.dtype],
                 shard_groups: Sequence[tuple[Any, ...]] | None) -> list[Tensor]:
    """:func:`_block_norm` of every block; a block with sharded parameters sums
    the squared norms of the local shards over the ranks (one all-reduce)."""
    if shard_groups is None or not any(shard_groups):
        return [_block_norm([us[i] for i in b], dt) for b, dt in zip(blocks, dtypes)]
    sq: list[Tensor | None] = [None] * len(us)
    for b in blocks:
        for i in b:
            sq[i] = torch.linalg.vector_norm(us[i]).to(torch.float64).square().reshape(1)
    _all_reduce_sums(sq, shard_groups)
    # sq[i]: set above for every i of every (non-empty) block
    sums = [functools.reduce(operator.add, [cast(Tensor, sq[i]) for i in b]) for b in blocks]
    return [torch.sqrt(total).reshape(()).to(dt) for total, dt in zip(sums, dtypes)]


def _norm_scale(u_norm: Tensor, avg: Tensor, first: bool, mode: str, beta: float) -> Tensor:
    """Scale factor for the update norm, and the EMA update of ``avg`` (in place)."""
    if first:
        scale = torch.ones_like(u_norm)
        avg.copy_(u_norm)  # r_1 = ||u_1||
        return scale
    ratio = torch.where(u_norm > 0, avg / torch.where(u_norm > 0, u_norm, torch.ones_like(u_norm)),
                        torch.ones_like(u_norm))
    scale = ratio.clamp(max=1.0) if mode == "clip" else ratio
    avg.mul_(beta).add_(u_norm, alpha=1 - beta)  # r_t = gamma r_{t-1} + (1 - gamma) ||u_t||
    return scale


def _single_tensor_lm_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    histories: list[Tensor],
    state_steps: list[Tensor],
    momentum_buffers: list[Tensor | None],
    update_norm_avgs: list[Tensor | None],
    grams: Sequence[Tensor | None],
    *,
    lr: float,
    eps: float,
    centered: bool,
    weight_decay: float,
    momentum: float,
    momentum_mode: str,
    update_norm: str | None,
    update_norm_beta: float,
    decoupled_weight_decay: bool,
    concatenate: bool,
    maximize: bool,
    exact: bool,
    accumulate: bool,
    names: Sequence[str],
    shard_groups: Sequence[tuple[Any, ...]] | None = None,
) -> None:
    if concatenate and len({p.device for p in params}) > 1:
        raise RuntimeError("LMAdagrad(concatenate=True) needs all parameters of a group on one device")
    gs = []
    for theta, g in zip(params, grads):
        # complex tensors as real views throughout: complex arithmetic (a complex
        # product for alpha * theta, say) rounds differently from the real twin
        g = _real(-g if maximize else g)
        if weight_decay != 0 and not decoupled_weight_decay:
            g = g.add(_real(theta), alpha=weight_decay)  # coupled: g_t + lambda theta_{t-1}
        gs.append(g)
    counts = [int(s.item()) for s in state_steps]  # CPU counters: no device sync
    _insert([_real(h) for h in histories], gs, counts, accumulate, names)
    for s in state_steps:
        s += 1
    blocks = _blocks(len(params), concatenate, counts)
    ts = [counts[b[0]] + 1 for b in blocks]
    # the vector to whiten: g_t, or the bias-corrected gradient average
    vs = list(gs)
    if momentum != 0 and momentum_mode == "gradient":
        for b, t in zip(blocks, ts):
            for i in b:
                m = _real(cast(Tensor, momentum_buffers[i]))  # given when momentum != 0
                m.mul_(momentum).add_(gs[i], alpha=1 - momentum)  # m_t = beta m_{t-1} + (1-beta) g_t
                vs[i] = m / (1 - momentum**t)
    if not exact:
        # not exact: lm_adagrad checked that the Gram matrices are given
        systems = _gram_systems(blocks, ts, histories, cast(Sequence[Tensor], grams), gs, vs, counts,
                                shard_groups)
    # placeholders, each set in the loop below
    all_us: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    for bi, (block, t) in enumerate(zip(blocks, ts)):
        hs = [histories[i] for i in block]
        if exact:
            us = []
            for i, h in zip(block, hs):
                if accumulate:
                    A = h
                else:
                    M = _flat_history(h, min(t, h.shape[0])).to(torch.float64)
                    A = M.T @ M  # A_t = M M^T in column convention
                try:
                    u = _exact_direction(A, _flat(vs[i]), eps)
                except torch.linalg.LinAlgError as err:
                    raise torch.linalg.LinAlgError(
                        f"FullMatrixAdagrad: the eigendecomposition of the {A.shape[0]} x {A.shape[0]} "
                        f"matrix A_t of {names[i]} failed at step t = {t - 1}: {err}"
                    ) from err
                us.append(u.reshape(_real(params[i]).shape))
        else:
            n = min(t, hs[0].shape[0])
            G, c = systems[bi]
            (a,) = _solve_small([G], [c], [_rtol(hs, n)], eps, centered)
            us = _combine(hs, a, n, [params[i] for i in block])
        for i, u in zip(block, us):
            all_us[i] = u
    if update_norm is not None:
        avgs = cast(Sequence[Tensor], update_norm_avgs)  # given when update_norm is set
        norms = _block_norms(blocks, all_us, [avgs[b[0]].dtype for b in blocks], shard_groups)
        for block, t, u_norm in zip(blocks, ts, norms):
            avg = avgs[block[0]]
            scale = _norm_scale(u_norm, avg, t == 1, update_norm, update_norm_beta)
            for i in block[1:]:
                avgs[i].copy_(avg)
            for i in block:
                all_us[i] = all_us[i] * scale.to(all_us[i].dtype)
    for block, t in zip(blocks, ts):
        for i in block:
            u = all_us[i]
            theta = _real(params[i])
            if momentum != 0 and momentum_mode == "update":
                m = _real(cast(Tensor, momentum_buffers[i]))  # given when momentum != 0
                m.mul_(momentum).add_(u, alpha=1 - momentum)  # m_t = beta m_{t-1} + (1-beta) u_t
                u = m / (1 - momentum**t)
            if weight_decay != 0 and decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)  # decoupled: theta (1 - eta lambda)
            theta.add_(u, alpha=-lr)  # theta_t = theta_{t-1} - eta u_t


def _multi_tensor_lm_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    histories: list[Tensor],
    state_steps: list[Tensor],
    momentum_buffers: list[Tensor | None],
    update_norm_avgs: list[Tensor | None],
    grams: Sequence[Tensor | None],
    *,
    lr: float,
    eps: float,
    centered: bool,
    weight_decay: float,
    momentum: float,
    momentum_mode: str,
    update_norm: str | None,
    update_norm_beta: float,
    decoupled_weight_decay: bool,
    concatenate: bool,
    maximize: bool,
    exact: bool,
    accumulate: bool,
    names: Sequence[str],
    shard_groups: Sequence[tuple[Any, ...]] | None = None,
) -> None:
    """Same update as the single-tensor path; element-wise work uses
    ``torch._foreach_*`` and the small eigenproblems of all parameters are
    moved to the host in one transfer (one synchronisation per step on CUDA)."""
    if exact:  # the exact reference is for small problems: loop
        _single_tensor_lm_adagrad(
            params, grads, histories, state_steps, momentum_buffers, update_norm_avgs, grams,
            lr=lr, eps=eps, centered=centered, weight_decay=weight_decay, momentum=momentum,
            momentum_mode=momentum_mode, update_norm=update_norm, update_norm_beta=update_norm_beta,
            decoupled_weight_decay=decoupled_weight_decay, concatenate=concatenate,
            maximize=maximize, exact=exact, accumulate=accumulate, names=names,
            shard_groups=shard_groups,
        )
        return
    if concatenate and len({p.device for p in params}) > 1:
        raise RuntimeError("LMAdagrad(concatenate=True) needs all parameters of a group on one device")
    rp = [_real(p) for p in params]
    gs = [_real(g) for g in grads]
    buckets = _group_by_device_and_dtype([rp, gs], with_indices=True)
    for (p_list, g_list), idx in buckets.values():
        g_list = _foreach_l2_grads(
            p_list, g_list, maximize=maximize,
            weight_decay=0.0 if decoupled_weight_decay else weight_decay,
        )
        for j, g in zip(idx, g_list):
            gs[j] = g
    counts = [int(s.item()) for s in state_steps]
    _insert([_real(h) for h in histories], gs, counts, False, names)
    _increment_steps(state_steps)

    blocks = _blocks(len(params), concatenate, counts)
    ts = [counts[b[0]] + 1 for b in blocks]
    vs = list(gs)
    if momentum != 0 and momentum_mode == "gradient":
        ms = [_real(cast(Tensor, m)) for m in momentum_buffers]  # given when momentum != 0
        for (m_list, g_list), idx in _group_by_device_and_dtype([ms, gs], with_indices=True).values():
            torch._foreach_mul_(m_list, momentum)
            torch._foreach_add_(m_list, g_list, alpha=1 - momentum)
        for b, t in zip(blocks, ts):
            for i in b:
                vs[i] = ms[i] / (1 - momentum**t)

    # Gram matrices and right-hand sides; all small problems of a device solved in one go
    per_device: dict[torch.device, list[int]] = {}
    Gs, cs, rtols = [], [], []
    # not exact (it loops above): lm_adagrad checked that the Gram matrices are given
    systems = _gram_systems(blocks, ts, histories, cast(Sequence[Tensor], grams), gs, vs, counts,
                            shard_groups)
    for bi, (b, t) in enumerate(zip(blocks, ts)):
        hs = [histories[i] for i in b]
        n = min(t, hs[0].shape[0])
        G, c = systems[bi]
        Gs.append(G)
        cs.append(c)
        rtols.append(_rtol(hs, n))
        per_device.setdefault(G.device, []).append(bi)
    coeffs: list[Tensor | None] = [None] * len(blocks)
    for bis in per_device.values():
        sol = _solve_small([Gs[bi] for bi in bis], [cs[bi] for bi in bis], [rtols[bi] for bi in bis],
                           eps, centered)
        for bi, a in zip(bis, sol):
            coeffs[bi] = a
    # placeholders, each set in the loop below
    us: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    for b, t, a_b in zip(blocks, ts, coeffs):
        n = min(t, histories[b[0]].shape[0])
        a = cast(Tensor, a_b)  # solved above for every block
        for i, u in zip(b, _combine([histories[i] for i in b], a, n, [params[i] for i in b])):
            us[i] = u

    if update_norm is not None:
        avgs = cast(Sequence[Tensor], update_norm_avgs)  # given when update_norm is set
        norms = _block_norms(blocks, us, [avgs[b[0]].dtype for b in blocks], shard_groups)
        for b, t, u_norm in zip(blocks, ts, norms):
            avg = avgs[b[0]]
            scale = _norm_scale(u_norm, avg, t == 1, update_norm, update_norm_beta)
            for i in b[1:]:
                avgs[i].copy_(avg)
            for i in b:
                us[i] = us[i] * scale.to(us[i].dtype)

    if momentum != 0 and momentum_mode == "update":
        ms = [_real(cast(Tensor, m)) for m in momentum_buffers]  # given when momentum != 0
        for (m_list, u_list), idx in _group_by_device_and_dtype([ms, us], with_indices=True).values():
            torch._foreach_mul_(m_list, momentum)
            torch._foreach_add_(m_list, u_list, alpha=1 - momentum)
        for b, t in zip(blocks, ts):
            for i in b:
                us[i] = ms[i] / (1 - momentum**t)

    for (p_list, u_list), idx in _group_by_device_and_dtype([rp, us], with_indices=True).values():
        if weight_decay != 0 and decoupled_weight_decay:
            torch._foreach_mul_(p_list, 1 - lr * weight_decay)
        torch._foreach_add_(p_list, u_list, alpha=-lr)


# --------------------------------------------------------------------------- #
# The step under torch.compile                                                 #
# --------------------------------------------------------------------------- #


def _assert_finite_async(grads: Sequence[Tensor], name: str) -> None:
    """The non-finite gradient check while Dynamo traces: one device assertion
    (``torch._assert_async``) per device that every entry of every gradient is
    finite, without a host read (see :class:`LMAdagrad`, "torch.compile")."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        g = _local(g)
        by_device.setdefault(g.device, []).append(g)
    for gs in by_device.values():
        ok = torch.stack([torch.isfinite(g).all() for g in gs]).all()
        torch._assert_async(
            ok,
            f"{name}: a gradient has a NaN or infinite entry (checked inside the compiled step, "
            "which cannot name the parameter and step without a host synchronisation: run the "
            "step eagerly to get them). Every entry of a whitened update depends on every entry "
            "of the gradient",
        )


def _add_scaled(t: Tensor, x: Tensor, alpha: float | Tensor) -> Tensor:
    """``t + alpha * x``; ``alpha=`` when ``alpha`` is a number (as the eager path), a product
    first when it is the 0-dim tensor a tensor hyperparameter is while compiling."""
    if isinstance(alpha, Tensor):
        return t + alpha * x
    return t.add(x, alpha=alpha)


def _valid_slots(k: int, n: Tensor, device: torch.device) -> Tensor:
    """Boolean mask of the ring buffer's slots that hold a gradient: the first ``n``
    (``n = min(t, k)`` a 0-dim tensor; slots fill in order until the window is full)."""
    return torch.arange(k, device=device) < n  # a 0-dim CPU n: a scalar operand, no copy


def _whitening_coefficients_masked(G: Tensor, c: Tensor, eps: float, centered: bool,
                                   n: Tensor, valid: Tensor) -> Tensor:
    r""":func:`_whitening_coefficients` of the leading ``n x n`` blocks of the ``k x k``
    Gram matrices ``G`` (..., k, k), computed on the whole ``k x k`` matrices (a
    shape that does not change with the step); ``c`` (..., k), ``n`` (...) the
    numbers of filled slots (float64), ``valid`` (..., k) their mask.

    The rows and columns of the slots that hold no gradient yet (``valid`` False)
    are zero: a zero column of the window adds nothing to :math:`M^\top M`, so ``G``
    has the eigenvalues of its valid block plus ``k - n`` zeros, and a zero
    eigenvalue is never kept (the cut-off is :math:`\mathrm{rtol}\cdot\mathrm{tr} \ge 0`
    and an eigenvalue must exceed it). The cut-off uses the number of valid slots
    ``n``, as the eager path does; centering uses
    :math:`C = \mathrm{diag}(m) - m m^\top/n` with :math:`m` the mask, which is
    :math:`I - \mathbf{1}\mathbf{1}^\top/n` on the valid block and zero elsewhere;
    the coefficients of empty slots are set to zero.
    """
    f64 = torch.float64
    mask = valid.to(f64)
    outer = mask.unsqueeze(-1) * mask.unsqueeze(-2)
    G = G * outer
    c = c * mask
    scale = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1, keepdim=True).clamp(min=0)
    rtol = (_RTOL_FACTOR * torch.finfo(f64).eps) * n.unsqueeze(-1)
    if centered:
        C = torch.diag_embed(mask) - outer / n.unsqueeze(-1).unsqueeze(-1)
        G = C @ G @ C
        c = (C @ c.unsqueeze(-1)).squeeze(-1)
    lam, V = torch.linalg.eigh(G)
    keep = lam > rtol * scale
    lam_safe = torch.where(keep, lam, torch.ones_like(lam))
    w = torch.where(keep, 1.0 / (lam_safe * torch.sqrt(lam_safe + eps)), torch.zeros_like(lam))
    a = (V @ (w * (V.transpose(-1, -2) @ c.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
    if centered:
        a = (C @ a.unsqueeze(-1)).squeeze(-1)
    return a * mask


def _matvec64_traced(M: Tensor, x: Tensor) -> Tensor:
    """:func:`_matvec64` as one float64 reduction: traced by Dynamo, inductor fuses
    the conversion into the reduction (one pass over the window, no float64 copy and
    no chunk loop to unroll)."""
    return (M.to(torch.float64) * x.to(torch.float64)).sum(-1)


def _compiled_lm_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    histories: list[Tensor],
    state_steps: list[Tensor],
    momentum_buffers: list[Tensor | None],
    update_norm_avgs: list[Tensor | None],
    grams: Sequence[Tensor | None],
    *,
    lr: float | Tensor,
    eps: float,
    centered: bool,
    weight_decay: float | Tensor,
    momentum: float,
    momentum_mode: str,
    update_norm: str | None,
    update_norm_beta: float,
    decoupled_weight_decay: bool,
    concatenate: bool,
    maximize: bool,
    exact: bool,
    accumulate: bool,
    names: Sequence[str],
) -> None:
    """The step of both paths while Dynamo traces it: the single-tensor update with
    shapes that do not change with the step and no host read.

    The step counters stay 0-dim tensors: the ring position ``count % k``, the
    number of valid slots ``n = min(t, k)`` and the bias corrections are tensor
    arithmetic (bias corrections in float64, as the eager path's Python floats).
    The gradient goes in with ``index_copy_``; the Gram row :math:`M^\\top g_t` is
    computed over all ``k`` slots (the empty ones are zero) and the whitening
    solves the whole ``k x k`` problem with the empty slots masked
    (:func:`_whitening_coefficients_masked`), on the Gram matrix's device, one
    batched solve for all blocks with the same ``k`` on a device.
    :math:`M^\\top v` and :math:`M a` are float64 reductions that inductor fuses
    with the conversion of the window (one pass over it each). Checks
    that eagerly read a value on the host (overflow of the Gram matrix or of
    :math:`A_t`, equal step counts with ``concatenate``) are device assertions.
    """
    if concatenate and len({p.device for p in params}) > 1:
        raise RuntimeError("LMAdagrad(concatenate=True) needs all parameters of a group on one device")
    f64 = torch.float64
    gs = []
    for theta, g in zip(params, grads):
        g = _real(-g if maximize else g)
        if weight_decay != 0 and not decoupled_weight_decay:
            g = _add_scaled(g, _real(theta), weight_decay)  # coupled: g_t + lambda theta_{t-1}
        gs.append(g)
    blocks = _blocks(len(params), concatenate)
    if concatenate and len(params) > 1:
        torch._assert_async(
            torch.stack(state_steps).eq(state_steps[0]).all(),
            "LMAdagrad(concatenate=True) needs every parameter of a group to get a gradient at "
            "every step, but their step counts differ; use concatenate=False or put parameters "
            "that are sometimes frozen in another group",
        )
    hs_real = [_real(h) for h in histories]
    if accumulate:  # FullMatrixAdagrad without a window: A_t = A_{t-1} + g_t g_t^T
        for i, (h, g) in enumerate(zip(hs_real, gs)):
            A = torch.addr(h, _flat(g), _flat(g))
            torch._assert_async(
                torch.isfinite(A).all(),
                f"FullMatrixAdagrad: the sum A_t of g g^T of {names[i]} overflows {A.dtype}; use "
                "a wider dtype for this parameter or scale the loss down",
            )
            h.copy_(A)
    else:
        slots = []
        for h, g, s in zip(hs_real, gs, state_steps):
            # on the window's device, the CPU counter as a scalar operand (no explicit copy)
            slot = torch.remainder(torch.zeros(1, dtype=s.dtype, device=h.device) + s, h.shape[0]).long()
            h.index_copy_(0, slot, g.unsqueeze(0))  # slot count % k holds g_t
            slots.append(slot)
    for s in state_steps:
        s += 1
    # t: gradients seen, counted after this one (0-dim, on the counters' device)
    ts = [state_steps[b[0]] for b in blocks]
    vs = list(gs)
    if momentum != 0 and momentum_mode == "gradient":
        for b, t in zip(blocks, ts):
            bc = 1 - momentum ** t.to(f64)
            for i in b:
                m = _real(cast(Tensor, momentum_buffers[i]))  # given when momentum != 0
                m.mul_(momentum).add_(gs[i], alpha=1 - momentum)  # m_t = beta m_{t-1} + (1-beta) g_t
                vs[i] = m / bc
    all_us: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    systems: dict[tuple[int, torch.device], list[tuple[list[int], Tensor, Tensor, Tensor]]] = {}
    for b, t in zip(blocks, ts):
        k = hs_real[b[0]].shape[0]
        if exact:
            for i in b:
                if accumulate:
                    A = hs_real[i]
                else:
                    valid = _valid_slots(k, torch.clamp(t, max=k), hs_real[i].device)
                    M = _flat_history(histories[i], k).to(f64)
                    M = torch.where(valid.unsqueeze(-1), M, torch.zeros_like(M))
                    A = M.T @ M  # A_t = M M^T in column convention
                all_us[i] = _exact_direction(A, _flat(vs[i]), eps).reshape(_real(params[i]).shape)
            continue
        n = torch.clamp(t, max=k)
        G: Tensor | None = None
        c: Tensor | None = None
        for i in b:
            gram = cast(Tensor, grams[i])  # not exact: lm_adagrad checked that they are given
            valid = _valid_slots(k, n, gram.device)
            M = _flat_history(histories[i], k)
            row = torch.where(valid, _matvec64_traced(M, _flat(gs[i])), 0.0)  # g_j^T g_t
            ci = row if vs[i] is gs[i] else torch.where(valid, _matvec64_traced(M, _flat(vs[i])), 0.0)
            slot = slots[i]  # on the parameter's device, as the Gram matrix
            gram.index_copy_(0, slot, row.unsqueeze(0))
            gram.index_copy_(1, slot, row.unsqueeze(1))
            G = gram if G is None else G + gram
            c = ci if c is None else c + ci
        G, c = cast(Tensor, G), cast(Tensor, c)  # a block has at least one parameter
        # the small problems of all blocks with the same k on one device: one batched solve
        systems.setdefault((k, G.device), []).append((b, G, c, n))
    for (k, device), entries in systems.items():
        Gs = torch.stack([G for _, G, _, _ in entries])
        cs = torch.stack([c for _, _, c, _ in entries])
        # the counters enter as scalar operands of device ops (no copy of a CPU tensor)
        ns = torch.stack([torch.zeros((), dtype=f64, device=device) + n for _, _, _, n in entries])
        valid = torch.arange(k, device=device) < ns.unsqueeze(-1)
        torch._assert_async(
            torch.isfinite(Gs).all() & torch.isfinite(cs).all(),
            "LMAdagrad: the float64 Gram matrix M^T M or M^T v overflowed (finite gradient "
            "entries above about 1e154 in float64 parameters, or non-finite parameters with "
            "coupled weight decay); the history now holds them. Scale the loss down",
        )
        coeffs = _whitening_coefficients_masked(Gs, cs, eps, centered, ns, valid)
        for (b, _, _, _), a in zip(entries, coeffs.unbind(0)):
            for i in b:  # u_i = M_i a, accumulated in float64
                M = _flat_history(histories[i], k)
                u = (a.unsqueeze(-1) * M.to(f64)).sum(0)
                all_us[i] = u.to(M.dtype).reshape(_real(params[i]).shape)
    if update_norm is not None:
        avgs = cast(Sequence[Tensor], update_norm_avgs)  # given when update_norm is set
        norms = _block_norms(blocks, all_us, [avgs[b[0]].dtype for b in blocks], None)
        for b, t, u_norm in zip(blocks, ts, norms):
            avg = avgs[b[0]]
            one = torch.ones_like(u_norm)
            pos = u_norm > 0
            ratio = torch.where(pos, avg / torch.where(pos, u_norm, one), one)
            scale = ratio.clamp(max=1.0) if update_norm == "clip" else ratio
            first = t == 1  # r_1 = ||u_1||, scale 1
            scale = torch.where(first, one, scale)
            avg.copy_(torch.where(first, u_norm, avg.mul(update_norm_beta).add(u_norm, alpha=1 - update_norm_beta)))
            for i in b[1:]:
                avgs[i].copy_(avg)
            for i in b:
                all_us[i] = all_us[i] * scale.to(all_us[i].dtype)
    for b, t in zip(blocks, ts):
        for i in b:
            u = all_us[i]
            theta = _real(params[i])
            if momentum != 0 and momentum_mode == "update":
                m = _real(cast(Tensor, momentum_buffers[i]))  # given when momentum != 0
                m.mul_(momentum).add_(u, alpha=1 - momentum)  # m_t = beta m_{t-1} + (1-beta) u_t
                u = m / (1 - momentum ** t.to(f64))
            if weight_decay != 0 and decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)  # decoupled: theta (1 - eta lambda)
            if isinstance(lr, Tensor):  # a tensor lr: theta - eta * u, the product first
                theta.sub_(lr * u)
            else:
                theta.add_(u, alpha=-lr)  # theta_t = theta_{t-1} - eta u_t
