r"""Shared plumbing for every optimizer in :mod:`optimizers`.

Everything that is *not* the mathematics of an update rule lives here, written
once, so that each algorithm module (``sgd.py``, ``adam.py``, ...) contains
little more than its equations. A new optimizer is written in four pieces:

1. **Validation** in ``__init__`` with the helpers below
   (:func:`_check_lr`, :func:`_check_nonnegative`, :func:`_check_range`,
   :func:`_check_betas`, :func:`_check_impl_flags`). Each raises
   :class:`ValueError` with a message that names the hyperparameter, the value
   and the allowed range, e.g. ``Invalid lr: -0.1 (must be >= 0)``.
2. **Lazy state**: subclass :class:`OptimizerBase`, implement
   :meth:`OptimizerBase._init_state` (the state of one parameter before its
   first update) and use :meth:`OptimizerBase._lazy_state` to fetch it.
   Step counters are 0-dim float tensors (:func:`_new_step`), as in
   ``torch.optim``, so that state dicts are interchangeable with torch's.
3. **The step of one param group**: implement
   :meth:`OptimizerBase._step_group`, which gathers the tensors
   (:meth:`OptimizerBase._gather`) and calls the module's functional core.
   :meth:`OptimizerBase.step` handles the closure, ``no_grad`` and the loop
   over groups.
4. **The functional core**: a readable single-tensor function
   ``_single_tensor_<name>`` (a Python loop over parameters, what the book
   quotes; the default on CPU) and a multi-tensor ``_multi_tensor_<name>``
   built on ``torch._foreach_*`` ops (the default on CUDA), chosen by
   :func:`_resolve_impl` with torch.optim's rule. The multi-tensor
   version runs once per (device, dtype) bucket (:func:`_group_by_device_and_dtype`)
   and treats complex tensors as real ones of twice the size
   (:func:`_view_as_real_lists`).

A minimal example, plain gradient descent with a step counter::

    class GD(OptimizerBase):
        def __init__(self, params, lr=0.1, *, foreach=None):
            _check_lr(lr)
            super().__init__(params, dict(lr=lr, foreach=foreach, maximize=False))

        def _init_state(self, p, group):
            return {"step": _new_step()}

        def _step_group(self, group):
            params, grads, _, _ = self._gather(group)
            steps = [self._lazy_state(p, group)["step"] for p in params]
            _increment_steps(steps)
            for p, g in zip(params, grads):
                p.add_(g, alpha=-_as_float(group["lr"]))

Nothing here imports matplotlib or the book helpers.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast, overload

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

__all__ = ["OptimizerBase", "InvalidParamsError"]

# What a closure returns (usually a loss Tensor or a float); ``step(closure)`` returns it.
_LossT = TypeVar("_LossT")


# --------------------------------------------------------------------------- #
# Validation                                                                   #
# --------------------------------------------------------------------------- #


class InvalidParamsError(TypeError, ValueError):
    """The ``params`` argument is not a non-empty iterable of tensors or dicts.

    It derives from both :class:`TypeError` (what ``torch.optim`` raises for a
    bare tensor) and :class:`ValueError` (what it raises for an empty list),
    so code written against either convention keeps working.
    """


def _check_params(params: Any) -> list[Any]:
    """Return ``params`` as a list, refusing what no optimizer can use.

    Raises :class:`InvalidParamsError` for a single tensor (a common slip:
    ``Adam(model.weight)`` instead of ``Adam([model.weight])``), for anything
    that is not iterable, and for an empty iterable.
    """
    if isinstance(params, Tensor):
        raise InvalidParamsError(
            "Invalid params: a single Tensor (must be an iterable of Tensors or "
            "of dicts defining parameter groups; wrap it in a list: [tensor]) "
            "[torch.optim: params argument given to the optimizer should be an "
            "iterable of Tensors or dicts, but got a Tensor]"
        )
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise InvalidParamsError(
            f"Invalid params: {type(params).__name__!s} object (must be an iterable "
            "of Tensors or of dicts defining parameter groups) [torch.optim: params "
            "argument given to the optimizer should be an iterable of Tensors or dicts]"
        )
    params = list(params)
    if len(params) == 0:
        raise InvalidParamsError(
            "Invalid params: optimizer got an empty parameter list (must contain "
            "at least one Tensor or parameter group)"
        )
    return params


def _fmt(value: Any) -> str:
    """Format a hyperparameter for an error message (tensors by their value)."""
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return f"tensor({value.item()!r})"
        return f"tensor of shape {tuple(value.shape)}"
    return repr(value)


def _real_number(name: str, value: Any) -> float:
    """Return ``value`` as a Python float, or raise a ValueError naming it.

    Accepts Python/NumPy real numbers and 1-element real tensors; refuses
    strings, complex numbers, multi-element tensors and NaN.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"Invalid {name}: {_fmt(value)} (a Tensor {name} must be 1-element)"
            )
        if value.is_complex():
            raise ValueError(f"Invalid {name}: {_fmt(value)} (must be a real number)")
        x = float(value.item())
    elif isinstance(value, numbers.Real):
        x = float(value)
    else:
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must be a real number)")
    if math.isnan(x):
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must not be NaN)")
    return x


def _check_nonnegative(name: str, value: Any) -> None:
    """Require ``value >= 0`` (and not NaN); raise ``ValueError`` naming ``name``.

    >>> _check_nonnegative("eps", -1e-8)
    Traceback (most recent call last):
    ...
    ValueError: Invalid eps: -1e-08 (must be >= 0)
    """
    x = _real_number(name, value)
    if not x >= 0.0:
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must be >= 0)")


def _check_lr(lr: Any) -> None:
    """Validate a learning rate: a float or a 1-element tensor, ``>= 0``, not NaN.

    A tensor learning rate is accepted, as in ``torch.optim``; the functional
    cores read its value with :func:`_as_float`.
    """
    _check_nonnegative("lr", lr)


def _check_range(
    name: str,
    value: Any,
    lo: float,
    hi: float,
    *,
    lo_closed: bool = True,
    hi_closed: bool = True,
) -> None:
    """Require ``value`` in the interval from ``lo`` to ``hi``.

    ``lo_closed``/``hi_closed`` choose ``[`` or ``(`` and ``]`` or ``)``; the
    message spells the interval the same way, e.g.
    ``Invalid betas[1]: 1.0 (must be in [0, 1))``.
    """
    x = _real_number(name, value)
    ok_lo = x >= lo if lo_closed else x > lo
    ok_hi = x <= hi if hi_closed else x < hi
    if not (ok_lo and ok_hi):
        interval = (
            ("[" if lo_closed else "(")
            + f"{lo:g}, {hi:g}"
            + ("]" if hi_closed else ")")
        )
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must be in {interval})")


def _check_betas(betas: Any, name: str = "betas") -> tuple[Any, ...]:
    """Validate a pair ``(beta1, beta2)`` with each coefficient in ``[0, 1)``.

    Returns the pair as a tuple; 1-element tensors are squeezed to 0-dim, as
    ``torch.optim`` does.
    """
    if isinstance(betas, Tensor) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ValueError(
            f"Invalid {name}: {_fmt(betas)} (must be a pair (beta1, beta2) of numbers "
            "in [0, 1))"
        )
    out = []
    for i, b in enumerate(betas):
        _check_range(f"{name}[{i}]", b, 0.0, 1.0, hi_closed=False)
        out.append(b.squeeze() if isinstance(b, Tensor) and b.dim() != 0 else b)
    return tuple(out)


def _check_impl_flags(
    name: str,
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    differentiable: bool = False,
    capturable: bool = False,
    fused_supported: bool = False,
    differentiable_supported: bool = False,
) -> None:
    """Validate the implementation switches shared by all optimizers.

    ``foreach`` and ``fused`` cannot both be True; ``fused=True`` is only
    accepted where torch ships a fused kernel (``fused_supported``).
    ``differentiable=True`` (autograd through the step, on the single-tensor
    path) is accepted where ``torch.optim`` has the same class
    (``differentiable_supported``), but never with ``fused=True`` (torch's
    ``RuntimeError``); elsewhere it raises, as does ``capturable=True``
    (CUDA-graph capture, not implemented here), instead of silently doing
    something else.
    """
    if differentiable and fused:
        raise RuntimeError(
            f"Invalid fused: True with differentiable=True (`fused` does not support "
            f"`differentiable`: {name} differentiates through its single-tensor path; "
            "leave fused=None)"
        )
    if foreach and fused:
        raise ValueError(
            f"Invalid fused: True with foreach=True (must not both be True: {name} "
            "runs one implementation at a time)"
        )
    if fused and not fused_supported:
        raise ValueError(
            f"Invalid fused: True (must be None or False: {name} has no fused "
            "kernel in torch; use foreach=True or leave fused=None)"
        )
    if differentiable and not differentiable_supported:
        raise ValueError(
            f"Invalid differentiable: True (must be False: differentiating through "
            f"the step is not implemented by optimizers.{name}, which has no "
            "torch.optim counterpart)"
        )
    if capturable:
        raise ValueError(
            f"Invalid capturable: True (must be False: CUDA-graph capture is not "
            f"implemented by optimizers.{name}; use torch.optim.{name})"
        )


# --------------------------------------------------------------------------- #
# Scalars and step counters                                                    #
# --------------------------------------------------------------------------- #


#: a list of tensors as the ``torch._foreach_*`` ops take it (they return tuples)
_Tensors = list[Tensor] | tuple[Tensor, ...]


def _compiling() -> bool:
    """True while Dynamo traces the code (``torch.compile``)."""
    return torch.compiler.is_compiling()


def _as_float(x: float | Tensor) -> float:
    """A hyperparameter or step counter as a Python number (``.item()`` of a tensor).

    Under ``torch.compile`` a tensor is returned unchanged, as ``torch.optim``'s
    ``_get_value`` does: ``.item()`` would be a host synchronisation and a graph
    break, and the arithmetic that follows (bias corrections, step sizes) works on
    0-dim tensors too. In eager mode ``.item()`` of a CPU scalar is the faster one.
    """
    if isinstance(x, Tensor) and not _compiling():
        return x.item()
    return x  # type: ignore[return-value]  # a 0-dim Tensor while compiling


def _foreach_addcdiv_scaled_(params: _Tensors, t1: _Tensors, t2: _Tensors, scalars: list[Any]) -> None:
    """``params[i] += scalars[i] * t1[i] / t2[i]`` for every ``i``.

    Eagerly the scalars are Python numbers and this is one
    ``torch._foreach_addcdiv_``. While compiling they are 0-dim tensors (see
    :func:`_as_float`): they multiply ``t1`` first (a tensor-list product), as in
    ``torch.optim``'s capturable paths, which rounds differently in the last bit.
    """
    if _compiling() and scalars and isinstance(scalars[0], Tensor):
        torch._foreach_addcdiv_(params, torch._foreach_mul(t1, scalars), t2)
    else:
        torch._foreach_addcdiv_(params, t1, t2, scalars)


def _foreach_add_scaled_(params: _Tensors, tensors: _Tensors, alpha: Any) -> None:
    """``params[i] += alpha * tensors[i]``: one ``torch._foreach_add_`` with a Python
    ``alpha``; while compiling, a 0-dim tensor ``alpha`` (a tensor learning rate)
    multiplies first, as in ``torch.optim`` (``alpha=`` must be a number)."""
    if _compiling() and isinstance(alpha, Tensor):
        torch._foreach_add_(params, torch._foreach_mul(tensors, alpha))
    else:
        torch._foreach_add_(params, tensors, alpha=alpha)


def _foreach_addcmul_scaled_(params: _Tensors, t1: _Tensors, t2: _Tensors, scalars: list[Any]) -> None:
    """``params[i] += scalars[i] * t1[i] * t2[i]``: as :func:`_foreach_addcdiv_scaled_`."""
    if _compiling() and scalars and isinstance(scalars[0], Tensor):
        torch._foreach_addcmul_(params, torch._foreach_mul(t1, scalars), t2)
    else:
        torch._foreach_addcmul_(params, t1, t2, scalars)


def _sqrt(x: Any) -> Any:
    """``math.sqrt`` of a Python number (correctly rounded); ``x ** 0.5`` of the 0-dim
    tensor that a step-dependent scalar is while compiling (see :func:`_as_float`)."""
    return x**0.5 if isinstance(x, Tensor) else math.sqrt(x)


def _scalar_dtype(fused: bool | None = False) -> torch.dtype:
    """Dtype of 0-dim state scalars (``step``, NAdam's ``mu_product``).

    Same rule as ``torch.optim``: float64 when the default dtype is float64,
    float32 otherwise, and always float32 for the fused kernels.
    """
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _new_step(param: Tensor | None = None, fused: bool | None = False) -> Tensor:
    """A fresh step counter, ``tensor(0.)``.

    It lives on the CPU (reading it is then free) unless ``fused``, whose
    kernels read it on the parameter's device.
    """
    if fused and param is not None:
        return torch.zeros((), dtype=_scalar_dtype(True), device=param.device)
    return torch.tensor(0.0, dtype=_scalar_dtype())


def _increment_steps(steps: list[Tensor]) -> None:
    """``t <- t + 1`` for a list of step counters, in one foreach call."""
    if not steps:
        return
    if steps[0].is_cpu:
        # Adding a CPU scalar tensor keeps the call on the tensor-scalar
        # overload, as torch.optim does.
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def _step_values(steps: Sequence[Tensor]) -> list[float]:
    """The step counters as Python floats (used for bias corrections).

    While compiling, the counters themselves (see :func:`_as_float`).
    """
    return [_as_float(s) for s in steps]


# --------------------------------------------------------------------------- #
# Choosing and running an implementation                                       #
# --------------------------------------------------------------------------- #

_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


@functools.lru_cache(maxsize=None)
def _foreach_devices() -> frozenset[str]:
    """Device types where ``foreach=None`` means foreach (torch's list: no CPU)."""
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

    return frozenset(_get_foreach_kernels_supported_devices())


@functools.lru_cache(maxsize=None)
def _fused_devices() -> frozenset[str]:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return frozenset(_get_fused_kernels_supported_devices())


def _default_foreach(tensors: Iterable[Tensor | None]) -> bool:
    """Whether ``foreach=None`` should mean the multi-tensor path.

    The rule of ``torch.optim`` (``_default_to_fused_or_foreach``): True when
    every tensor is a plain ``Tensor``/``Parameter`` (no subclass such as a
    DTensor) on a device with native foreach kernels: CUDA and other
    accelerators, **not the CPU**. On CPU the foreach ops are loops over the
    tensors, each op one pass over all parameters; the single-tensor path
    runs all ops of one tensor while it is in cache and is 2-3x faster on a
    10M-parameter model (foreach wins only for many small tensors); see
    ``benchmarks/results/step_times.md``. Following torch's rule also makes
    the default trajectory bit-identical to torch.optim's.
    """
    # (while compiling, the uncached function: Dynamo traces through lru_cache and warns)
    devices = _foreach_devices.__wrapped__() if _compiling() else _foreach_devices()
    return all(
        t is None or (type(t) in _PLAIN_TENSOR_TYPES and t.device.type in devices)
        for t in tensors
    )


def _resolve_impl(
    params: list[Tensor], foreach: bool | None, fused: bool | None = None
) -> str:
    """Return ``"fused"``, ``"foreach"`` or ``"single"`` for a functional call.

    Explicit choices win; ``foreach=None, fused=None`` picks ``"foreach"``
    when :func:`_default_foreach` allows it (on CUDA), else ``"single"``.
    ``torch.jit`` scripting is not supported.
    """
    if fused:
        return "fused"
    if foreach is None:
        foreach = _default_foreach(params)
    return "foreach" if foreach else "single"


class ForeachDifferentiableError(RuntimeError, AssertionError):
    """``foreach=True`` with ``differentiable=True``: torch.optim raises an
    ``AssertionError`` ("_foreach ops don't support autograd"); this error is
    also a :class:`RuntimeError`, the type a user mistake gets elsewhere."""


def _foreach_flag(group: dict[str, Any], foreach_differentiable: bool = False) -> bool | None:
    """The ``foreach`` a group's step passes to its functional core.

    With ``differentiable=True`` the single-tensor path runs (``False``), as in
    torch.optim; an explicit ``foreach=True`` then raises torch's error
    ("_foreach ops don't support autograd"), except where torch.optim accepts
    the pair (``foreach_differentiable``: SGD, whose foreach step torch runs
    under autograd; the package runs the same update on its single-tensor path).
    """
    foreach = group.get("foreach")
    if group.get("differentiable", False):
        if foreach and not foreach_differentiable:
            raise ForeachDifferentiableError(
                "Invalid foreach: True with differentiable=True (_foreach ops don't "
                "support autograd: leave foreach=None or set it to False)"
            )
        return False
    return foreach


def _check_hyperparameters_detached(name: str, groups: list[dict[str, Any]]) -> None:
    """With ``differentiable=True``, refuse hyperparameter tensors that require grad.

    The package differentiates the step with respect to the parameters, their
    gradients and the optimizer state; its functional cores read ``lr``,
    ``betas`` and the others as numbers, which would silently cut the
    derivative with respect to a hyperparameter, so they raise instead.
    """
    for group in groups:
        for key, value in group.items():
            if key == "params":
                continue
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, Tensor) and v.requires_grad for v in values):
                raise RuntimeError(
                    f"Invalid {key}: a Tensor that requires grad (must not require grad: "
                    f"{name} with differentiable=True differentiates the step with respect "
                    f"to the parameters, gradients and state, not to {key}; pass "
                    f"{key} detached)"
                )


def _check_fused_tensors(name: str, params: Iterable[Tensor], grads: Iterable[Tensor] = ()) -> None:
    """Refuse tensors the fused kernels cannot take, with a clear message.

    Params must be floating point (not complex) on a device with fused
    kernels; gradients must be dense. Classes call this once, through
    :meth:`OptimizerBase._check_fused_once`, not at every step.
    """
    devices = _fused_devices.__wrapped__() if _compiling() else _fused_devices()
    for p in params:
        if not (p.device.type in devices and torch.is_floating_point(p)):
            raise RuntimeError(
                f"{name} with fused=True requires floating-point params on one of "
                f"{sorted(devices)}, but got {p.dtype} on {p.device.type} [torch.optim: "
                f"`fused=True` requires all the params to be floating point Tensors of "
                f"supported devices: {sorted(devices)} but {p.dtype} and {p.device.type}]"
            )
    for g in grads:
        if g.is_sparse:
            raise RuntimeError(f"{name} with fused=True does not support sparse gradients")


def _group_by_device_and_dtype(
    tensorlists: Sequence[Sequence[Tensor | None]], with_indices: bool = False
) -> dict[tuple[torch.device, torch.dtype], tuple[list[list[Any]], list[int]]]:
    """Split parallel tensor lists into buckets of one device and one dtype.

    ``torch._foreach_*`` kernels need every tensor of a call on one device with
    one dtype. ``tensorlists[0]`` (the params) decides the bucket; the other
    lists follow index by index and may hold ``None`` (or be empty). Returns
    ``{(device, dtype): (lists_in_bucket, original_indices)}``; the indices
    are filled only when ``with_indices`` is True. Tensors in the buckets are
    the same objects as in the input (in-place ops propagate back); ``None``
    entries replaced in a bucket do not.
    """
    return Optimizer._group_tensors_by_device_and_dtype(tensorlists, with_indices)  # type: ignore[arg-type, return-value]


def _foreach_l2_grads(
    params: list[Tensor], grads: list[Tensor], *, maximize: bool, weight_decay: float
) -> list[Tensor]:
    """The gradients a multi-tensor update uses: ``-g`` when maximizing, plus ``weight_decay * p``.

    ``weight_decay`` here is the coupled (L2) penalty; decoupled decay acts on the parameters and
    is the caller's business. New tensors are returned whenever either term applies, so the
    caller's ``.grad`` tensors are never modified.
    """
    if maximize:
        grads = torch._foreach_neg(grads)  # type: ignore[assignment]  # a list (stubs: tuple)
        if weight_decay != 0:
            torch._foreach_add_(grads, params, alpha=weight_decay)  # a fresh list we own
    elif weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)  # type: ignore[assignment]
    return grads


def _foreach_adam_moments(exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], grads: list[Tensor],
                          beta1: float, beta2: float) -> None:
    """Adam's two moving averages, in place, as torch.optim's foreach paths compute them:
    m <- m + (1 - beta1) (g - m) and v <- beta2 v + (1 - beta2) g * g (shared by Adam, AdamW,
    NAdam and RAdam)."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)


def _is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 shard)."""
    # no DTensor can exist before torch.distributed.tensor is imported, and
    # importing it here would cost seconds
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def _real(t: Tensor) -> Tensor:
    """``t`` viewed as real (a trailing dim of size 2) if it is complex."""
    return torch.view_as_real(t) if torch.is_complex(t) else t


def _view_as_real_lists(params: list[Tensor], *others: list[Tensor]) -> None:
    """In place: replace complex entries of ``params`` (and the same indices of
    ``others``) by their real views.

    A complex tensor of shape ``s`` becomes a real one of shape ``s + (2,)``:
    element-wise updates then treat real and imaginary parts as two separate
    coordinates, which is how ``torch.optim`` defines its updates on complex
    parameters.
    """
    for i, p in enumerate(params):
        if torch.is_complex(p):
            params[i] = torch.view_as_real(p)
            for lst in others:
                lst[i] = torch.view_as_real(lst[i])


# --------------------------------------------------------------------------- #
# The base class                                                               #
# --------------------------------------------------------------------------- #

# Keys that torch.optim param groups may carry, and the value an old or foreign
# state dict that lacks them should get. A key is filled in only where the
# defaults the class was constructed with have it: torch.optim.SparseAdam, LBFGS
# and Adafactor lack some of these keys, and their state dicts must keep the
# same layout.
_COMMON_GROUP_FALLBACKS: dict[str, Any] = {
    "maximize": False,
    "foreach": None,
    "differentiable": False,
}


class OptimizerBase(Optimizer):
    r"""Base class of the optimizers in this package.

    A :class:`torch.optim.Optimizer` (param groups, ``zero_grad``,
    ``state_dict``/``load_state_dict``, hooks, ``repr`` and deep copies all
    come from there) that adds:

    * validation of ``params`` (:func:`_check_params`);
    * :meth:`step`: evaluates the optional closure with gradients enabled,
      then calls :meth:`_step_group` for every group under ``torch.no_grad()``
      (with autograd on when ``differentiable=True``);
    * lazy per-parameter state (:meth:`_lazy_state` calls :meth:`_init_state`
      on first use);
    * gathering of the parameters that have a gradient (:meth:`_gather`),
      refusing sparse gradients unless ``_supports_sparse``;
    * ``__setstate__`` that fills group keys missing from old or foreign state
      dicts (``_group_fallbacks``; only keys of the constructor's ``defaults``) and
      turns Python-number step counters into tensors, so that ``torch.optim``
      state dicts load.

    Subclasses set ``_group_fallbacks`` (extra keys and their defaults),
    optionally ``_supports_sparse = True``, and implement :meth:`_init_state`
    and :meth:`_step_group`.
    """

    _supports_sparse: bool = False
    _group_fallbacks: dict[str, Any] = {}
    _fused_supported: bool = False
    #: fused=True through :func:`_compiled_per_tensor` (torch has no fused kernel)
    _fused_compiled: bool = False
    _differentiable_supported: bool = False

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(_check_params(params), defaults)
        # the group keys as constructed: torch.optim.Optimizer.__setstate__
        # adds "differentiable" to ``self.defaults`` of every class
        self._group_keys = frozenset(defaults)

    # -- state dicts ------------------------------------------------------- #
    def __getstate__(self) -> dict[str, Any]:  # for pickling and deep copies
        return {**super().__getstate__(), "_group_keys": self._group_keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        group_keys = getattr(self, "_group_keys", self.defaults)  # (an object pickled without it)
        name = type(self).__name__
        for group in self.param_groups:
            for key, value in {**_COMMON_GROUP_FALLBACKS, **self._group_fallbacks}.items():
                if key in group_keys:
                    group.setdefault(key, value)
            _check_impl_flags(
                name,
                foreach=group.get("foreach"),
                fused=group.get("fused"),
                differentiable=group.get("differentiable", False),
                capturable=group.get("capturable", False),
                fused_supported=self._fused_supported,
                differentiable_supported=self._differentiable_supported,
            )
            for p in group["params"]:
                p_state = self.state.get(p)
                if p_state and "step" in p_state and not torch.is_tensor(p_state["step"]):
                    fused = bool(group.get("fused"))
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]),
                        dtype=_scalar_dtype(fused),
                        device=p.device if fused else None,
                    )

    # -- the step ---------------------------------------------------------- #
    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], _LossT]) -> _LossT: ...
    def step(self, closure: Callable[[], _LossT] | None = None) -> _LossT | None:
        """Perform one optimization step; return the closure's loss, if any.

        Args:
            closure: optional callable that re-evaluates the model and returns
                the loss. It runs with gradients enabled, before the update.

        The update runs under ``torch.no_grad()``, or with autograd recording
        it when the optimizer was built with ``differentiable=True`` (what
        torch.optim's ``_use_grad_for_differentiable`` does).
        """
        differentiable = bool(self.defaults.get("differentiable", False))
        if differentiable:
            _check_hyperparameters_detached(type(self).__name__, self.param_groups)
        loss: _LossT | None = None
        with torch.set_grad_enabled(differentiable):
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:  # pragma: no cover
        """Update the parameters of one param group (implemented by subclasses)."""
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------- #
    def _gather(
        self, group: dict[str, Any], *, detect_complex: bool = True
    ) -> tuple[list[Tensor], list[Tensor], bool, bool]:
        """The parameters of ``group`` that have a gradient, and their gradients.

        Returns ``(params, grads, has_sparse_grad, has_complex)``. Parameters
        whose ``.grad`` is None are skipped (their state is not touched).
        Raises ``RuntimeError`` naming the optimizer on a sparse gradient
        unless the class sets ``_supports_sparse``. ``detect_complex=False``
        skips the complex check (``has_complex`` is then False) for updates
        that need no real view, saving a few microseconds per tensor.
        """
        params: list[Tensor] = []
        grads: list[Tensor] = []
        has_sparse = has_complex = False
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                if not self._supports_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients "
                        "(in this package SGD and Adagrad accept them, and SparseAdam "
                        "takes only sparse gradients)"
                    )
                has_sparse = True
            if detect_complex and not has_complex:
                has_complex = p.dtype.is_complex
            params.append(p)
            grads.append(g)
        return params, grads, has_sparse, has_complex

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Optimizer.add_param_group`, then :meth:`_check_new_group` on the
        group as torch completed it; a group the check refuses is removed again, so a refused
        group leaves the optimizer as it was."""
        super().add_param_group(param_group)
        try:
            self._check_new_group(len(self.param_groups) - 1, self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        self._fused_checked = False  # new params: check them before a fused step

    def _check_new_group(self, index: int, group: dict[str, Any]) -> None:
        """Refuse (``TypeError`` / ``ValueError``) what a class cannot optimize in a new group."""

    def _check_fused_once(self, group: dict[str, Any]) -> None:
        """For a ``fused`` group, check all fused groups' params once.

        The check (:func:`_check_fused_tensors`) runs at the first fused step
        and again after :meth:`add_param_group`, not at every step: on many
        small tensors it would cost a fifth of a fused step. As in torch.optim,
        only parameters with a gradient are checked (a step skips the others:
        e.g. the meta tensors ``module.to_empty()`` leaves in a group); until
        every parameter has had one, the check runs again at the next step.
        """
        if group.get("fused") and not getattr(self, "_fused_checked", False):
            check = _check_compiled_fused_tensors if self._fused_compiled else _check_fused_tensors
            complete = True
            for g in self.param_groups:
                if g.get("fused"):
                    with_grad = [p for p in g["params"] if p.grad is not None]
                    complete = complete and len(with_grad) == len(g["params"])
                    check(type(self).__name__, with_grad)
            self._fused_checked = complete

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        """The state of parameter ``p`` before its first update."""
        raise NotImplementedError

    def _lazy_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """``self.state[p]``, created by :meth:`_init_state` on first use."""
        state = self.state[p]
        if len(state) == 0:
            state.update(self._init_state(p, group))
        return state


# --------------------------------------------------------------------------- #
# fused=True without a torch kernel: one compiled pass per tensor              #
# --------------------------------------------------------------------------- #

def _inductor_with_scalars_hoisted(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """Inductor, with every 0-dim intermediate that feeds a tensor computation made an
    extra graph output (dropped again on return).

    Inductor inlines a 0-dim computation (bias corrections, NAdam's momentum schedule:
    ``pow`` in double precision) into the consumer's loop, where it is recomputed for
    every vector of 16 elements: ``std::pow`` sets errno, so the C++ compiler cannot
    hoist it, and NAdam's step ran 2x slower than its single-tensor path. An output must
    be realized: the scalars are then computed once, before the loop, which only loads them.
    """
    from torch._inductor.compile_fx import compile_fx

    output = next(n for n in gm.graph.nodes if n.op == "output")
    outs = output.args[0]
    n_out = len(outs) if isinstance(outs, (tuple, list)) else 1
    hoisted = []
    for node in gm.graph.nodes:
        value = node.meta.get("example_value")
        name = getattr(node.target, "__name__", str(node.target))
        if (
            node.op in ("call_function", "call_method")
            and isinstance(value, Tensor) and value.dim() == 0
            and not name.endswith("_") and not name.startswith("i")  # not in place (iadd, add_)
            and any(
                isinstance(u.meta.get("example_value"), Tensor) and u.meta["example_value"].dim() > 0
                for u in node.users
            )
        ):
            hoisted.append(node)
    sources = [_placeholder_source(n) for n in gm.graph.nodes if n.op == "placeholder"]
    if not hoisted or not isinstance(outs, (tuple, list)):
        compiled = cast("Callable[..., Any]", compile_fx(gm, example_inputs))
        _FUSED_BUILT.append((compiled, sources))
        return compiled
    output.args = ((*outs, *hoisted),)
    gm.recompile()
    compiled = cast("Callable[..., Any]", compile_fx(gm, example_inputs))

    def run(*args: Any) -> Any:
        return compiled(*args)[:n_out]

    _FUSED_BUILT.append((run, sources))
    return run


def _placeholder_source(node: torch.fx.Node) -> str | None:
    """The Python expression over the frame's locals ``L`` that Dynamo reads a graph input from."""
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = getattr(source, "name", None)
    return (name() if callable(name) else name) if source is not None else None


#: (compiled graph, its inputs' sources) built by the backend during the latest compile
_FUSED_BUILT: list[tuple[Callable[..., Any], list[str | None]]] = []


def _direct_call(built: list[tuple[Callable[..., Any], list[str | None]]]) -> Callable[..., None] | None:
    """A call of the one compiled graph without Dynamo's frame machinery, or None.

    After its first call a kernel's graph is fixed (one cache entry, see
    :func:`_compiled_per_tensor`): the inputs are the tensors (and their length) read at
    the sources Dynamo recorded, so they can be gathered and passed to inductor's compiled
    function directly, which saves about half of the per-tensor cost (Dynamo's entry,
    wrappers and config context). Only for exactly one graph whose every input source is
    a plain expression over the arguments.
    """
    if len(built) != 1:
        return None
    compiled, sources = built[0]
    if any(s is None or not s.startswith("L[") for s in sources):
        return None
    try:
        getter = eval("lambda L: (" + "".join(f"{s}, " for s in sources) + ")", {})  # noqa: S307  (Dynamo's own source names)
    except SyntaxError:
        return None

    def call(fn: Any, lists: Any, kwargs: Any) -> None:
        compiled(*getter({"fn": fn, "lists": lists, "kwargs": kwargs}))

    return call


#: options of the ``torch.compile`` call behind :func:`_compiled_per_tensor` (tests may
#: swap the backend for ``"aot_eager"``, which captures the same graph without code generation)
_FUSED_COMPILE_OPTIONS: dict[str, Any] = {"backend": _inductor_with_scalars_hoisted}

#: (single-tensor function, static options) -> the compiled per-tensor kernel
_FUSED_KERNELS: dict[tuple[Any, ...], Callable[..., None]] = {}

#: most kernels compiled for one function (each is a set of option values)
_FUSED_MAX_KERNELS = 16

#: tensors with fewer elements take the eager single-tensor path (it stays in cache)
_FUSED_MIN_NUMEL = 1 << 15

#: device types the compiled per-tensor kernels run on
_COMPILED_FUSED_DEVICES = frozenset({"cpu", "cuda"})


def _per_tensor_call(fn: Callable[..., None], lists: tuple[list[Any], ...], kwargs: dict[str, Any]) -> None:
    """What a compiled per-tensor kernel runs: ``fn`` on one-element lists (one tensor)."""
    fn(*lists, **kwargs)


def _fused_kernel(fn: Callable[..., None], key: tuple[Any, ...]) -> Callable[..., None]:
    """The compiled kernel for ``key``, built on first use.

    Each key gets its own copy of the code object of :func:`_per_tensor_call`: Dynamo
    keeps its cache (and its recompile limit) per code object, so the optimizers and
    option sets of one process do not evict each other's graphs.
    """
    kernel = _FUSED_KERNELS.get(key)
    if kernel is None:
        import types

        if sum(k[0] is fn for k in _FUSED_KERNELS) >= _FUSED_MAX_KERNELS:
            raise RuntimeError(
                f"fused=True has compiled {_FUSED_MAX_KERNELS} kernels for "
                f"{getattr(fn, '__name__', fn)}: an option other than lr (betas, eps, "
                "momentum, ...) or a dtype changes between steps, and every value "
                "compiles a new kernel; leave fused=None for such a schedule"
            )

        code = _per_tensor_call.__code__.replace(co_name=f"_fused_{getattr(fn, '__name__', 'kernel')}")
        fresh = types.FunctionType(code, _per_tensor_call.__globals__, code.co_name)
        kernel = cast(
            "Callable[..., None]",
            torch.compile(fresh, dynamic=True, fullgraph=True, **_FUSED_COMPILE_OPTIONS),
        )
        _FUSED_KERNELS[key] = kernel
    return kernel


#: kernels that have run once (compiled): later calls skip Dynamo's guards, or Dynamo
#: altogether where the value is a direct call of the compiled graph (:func:`_direct_call`)
_FUSED_WARM: dict[tuple[Any, ...], Callable[..., None] | None] = {}


def _flat_per(per: list[list[Any]], shape: torch.Size) -> list[list[Any]]:
    """One parameter's state lists with its full-size tensors as 1-D views (0-dim ones as they are)."""
    return [[_flat(x[0])] if x and isinstance(x[0], Tensor) and x[0].shape == shape else x for x in per]


def _flat(t: Tensor) -> Tensor:
    """``t`` as a 1-D real view (complex: real and imaginary parts interleaved).

    ``detach()`` last: a view carries its base, whose shape Dynamo then guards on (one
    graph per rank); the detached alias has none and shares data and version counter.
    """
    return _real(t).view(-1).detach()


def _compiled_per_tensor(fn: Callable[..., None]) -> Callable[..., None]:
    r"""``fused=True`` for an optimizer that torch ships no fused kernel for.

    ``fn`` is a module's single-tensor function, ``fn(params, grads, *state_lists,
    **options)``; the result has the same signature. For each parameter it runs ``fn``
    on one-element lists through ``torch.compile(dynamic=True, fullgraph=True)``:
    inductor fuses the update of one tensor into one loop, so the parameter, its
    gradient and its state are read and written in one pass over memory instead of one
    pass per elementwise op.

    One compiled graph serves every tensor: the parameter, its gradient and each state
    tensor of its shape enter as 1-D views (complex ones as real views), so only their
    length differs, and it is a dynamic size. 0-dim state (step counters, NAdam's
    ``mu_product``) enters as tensors (under Dynamo :func:`_as_float` keeps them
    tensors) and so does ``lr`` (a Python float becomes a float64 0-dim tensor): a new
    step or a scheduled learning rate is new data, not a new graph. The other options
    are compiled in as constants: a kernel is keyed by the function, the options'
    values, which optional state lists are present, the dtypes and the device
    (:data:`_FUSED_KERNELS`), and guard evaluation is skipped after its first call
    (everything the guards would check is in the key). Changing betas, eps, ... between
    steps compiles a new kernel; after :data:`_FUSED_MAX_KERNELS` kernels for one
    function it raises instead of compiling on every step.

    The step counter (the last state list, in every module) enters as a float64 copy,
    written back after the call: bias corrections and schedules are then computed in
    double precision, as the eager path computes them in Python floats. 0-dim
    intermediates are computed once before the element loop
    (:func:`_inductor_with_scalars_hoisted`). After a kernel's first call, later calls
    bypass Dynamo: inductor's compiled graph is called directly with the inputs read at
    the sources Dynamo recorded (:func:`_direct_call`).

    Tensors under :data:`_FUSED_MIN_NUMEL` elements, non-contiguous ones and 0-dim
    parameters take the eager single-tensor path: a small tensor stays in cache between
    the ops (there is no memory traffic to save), and its eager step costs about as much
    as one call of a compiled function.

    Cost, measured on this project's 2-core shared machine (torch 2.13 CPU, loaded by
    other jobs, so ratios moved by 20% between runs): the first step compiles each kernel,
    16-22 s with an empty cache (Lion, NAdam, RMSprop; it includes inductor's one-time start-up in
    the process), 3.5-5 s in a new process once inductor's on-disk cache holds the
    code (by default under ``/tmp/torchinductor_<user>``, ``TORCHINDUCTOR_CACHE_DIR`` to
    move it). Every later large tensor costs one call, about 20 microseconds. Step time
    over the bound 4(3 + 2S) bytes per float32 parameter (S state tensors) at the copy
    bandwidth of 256 MiB buffers measured in the same process, on the large set of
    ``benchmarks/bench_step.py`` (10.3M parameters in 172 tensors), one intra-op thread,
    best of 25-30 interleaved steps, four runs: Adam with torch's fused kernel 0.67-0.85;
    fused NAdam 1.35-1.6, RMSprop 1.1-1.5, Lion 0.9-1.5 (their single-tensor paths
    2.6-3.3, 2.2-2.5, 1.5-2.0). What remains above the bound is per-tensor work in
    Python: the 114 small tensors of that set take the eager path (NAdam's, about 15 ops
    each, is the longest) and the 58 large ones one compiled call each; on the large
    tensors alone fused Lion ran at 1.1x. With two threads on the loaded machine (one
    run: 1.4, 3.2, 2.5, 2.4) the OpenMP region of every call waits for a descheduled
    thread, and every path is slower.

    Numerics: inductor contracts a * b + c into fma, so results equal the single-tensor
    path to a few ulps, not bit for bit. CPU and CUDA (not measured on CUDA here: no GPU);
    ``differentiable=True`` and sparse gradients are refused before this runs.
    """

    name = getattr(fn, "__name__", "kernel")

    def run(params: list[Tensor], grads: list[Tensor], *lists: list[Any], **kwargs: Any) -> None:
        if _compiling():  # inside a user's torch.compile, which fuses the step itself
            fn(params, grads, *lists, **kwargs)
            return
        if "has_complex" in kwargs:
            kwargs = {**kwargs, "has_complex": False}  # the views below are real
        lr = kwargs.get("lr")
        if isinstance(lr, (int, float)):
            kwargs["lr"] = torch.tensor(float(lr), dtype=torch.float64)
        static = tuple(
            (k, type(v), (v.dtype, v.device) if isinstance(v, Tensor) else v)
            for k, v in sorted(kwargs.items())
        )
        present = (torch.is_grad_enabled(),) + tuple(len(lst) > 0 for lst in lists)
        kernels: dict[tuple[Any, ...], Callable[..., None]] = {}
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            for i, p in enumerate(params):
                g = grads[i]
                per = [[lst[i]] if lst else lst for lst in lists]
                shape = p.shape
                if p.numel() < _FUSED_MIN_NUMEL or not (
                    p.is_contiguous() and g.is_contiguous() and g.shape == shape and all(
                        x[0].is_contiguous() for x in per
                        if x and isinstance(x[0], Tensor) and x[0].shape == shape
                    )
                ):
                    fn([p], [g], *per, **kwargs)  # the eager single-tensor path
                    continue
                scalars = tuple(
                    (x[0].dtype, x[0].device) for x in per
                    if x and isinstance(x[0], Tensor) and x[0].shape != shape
                )
                kkey = (p.dtype, p.device, g.dtype, scalars)
                kernel = kernels.get(kkey)
                # the step counter (the last list, in every module) enters in float64: it
                # holds an integer exactly, and the step-dependent scalars (bias
                # corrections, schedules) are then computed in double precision, as the
                # eager path computes them in Python floats; written back below
                narrow = [
                    (x, x[0]) for x in per[-1:]
                    if x and isinstance(x[0], Tensor) and x[0].dim() == 0 and x[0].dtype != torch.float64
                ]
                for x, t in narrow:
                    x[0] = t.to(torch.float64)
                args = ([_flat(p)], [_flat(g)], *_flat_per(per, shape))
                if kernel is None:
                    key = (fn, kkey, present, static, tuple(sorted(_FUSED_COMPILE_OPTIONS.items())))
                    compiled = _fused_kernel(fn, key)
                    if key not in _FUSED_WARM:  # the first call compiles, with guards
                        # float options as constants (they are in the key): Dynamo would
                        # otherwise wrap each in a new tensor at every call
                        _FUSED_BUILT.clear()
                        with torch.compiler.set_stance(skip_guard_eval_unsafe=False), \
                                torch._dynamo.config.patch(specialize_float=True):
                            compiled(fn, args, kwargs)  # this tensor's step
                        _FUSED_WARM[key] = _direct_call(_FUSED_BUILT)
                        _FUSED_BUILT.clear()
                        kernels[kkey] = _FUSED_WARM[key] or compiled
                        for x, t in narrow:
                            t.copy_(x[0])
                        continue
                    kernel = kernels[kkey] = _FUSED_WARM[key] or compiled
                kernel(fn, args, kwargs)
                for x, t in narrow:
                    t.copy_(x[0])

    run.__name__ = f"_fused_{name}"
    run.__doc__ = f"fused=True: :func:`_compiled_per_tensor` of ``{name}``."
    return run


def _check_compiled_fused_tensors(name: str, params: Iterable[Tensor]) -> None:
    """Refuse parameters the compiled per-tensor kernels cannot take: they must be
    floating-point or complex, on the CPU or a CUDA device."""
    for p in params:
        if not (p.device.type in _COMPILED_FUSED_DEVICES and (p.is_floating_point() or p.is_complex())):
            raise RuntimeError(
                f"{name} with fused=True requires floating-point or complex params on one of "
                f"{sorted(_COMPILED_FUSED_DEVICES)}, but got {p.dtype} on {p.device.type}"
            )
