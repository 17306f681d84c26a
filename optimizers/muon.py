r"""Muon: momentum orthogonalised by a Newton-Schulz iteration, for 2-D weight matrices.

:class:`Muon` is a drop-in replacement for :class:`torch.optim.Muon` (same
arguments, defaults, state and trajectory); :func:`muon` is its functional
core and :func:`zeropower_via_newtonschulz` the orthogonalisation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import OptimizerBase, _as_float, _check_impl_flags, _real_number, _resolve_impl
from ._torch_phrases import check_lr, check_nonnegative, torch_phrase
from .lm_adagrad import _check_no_dtensor

__all__ = ["Muon", "muon", "zeropower_via_newtonschulz", "adjusted_lr"]

#: Jordan et al.'s quintic coefficients (a, b, c), torch.optim.Muon's defaults
DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
DEFAULT_EPS = 1e-7
DEFAULT_NS_STEPS = 5
_ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


class Muon(OptimizerBase):
    r"""Muon: SGD with Nesterov momentum whose step is orthogonalised, for 2-D hidden weights.

    For a weight matrix :math:`W_t \in \mathbb{R}^{A\times B}` with gradient
    :math:`G_t = \pm\nabla f(W_t)` (minus sign if ``maximize``), momentum
    :math:`\beta` (``momentum``), learning rate :math:`\eta`, decoupled weight
    decay :math:`\lambda`:

    .. math::

        M_t &= \beta M_{t-1} + (1-\beta) G_t, \qquad M_{-1} = 0 \\
        U_t &= \begin{cases} (1-\beta) G_t + \beta M_t & \texttt{nesterov} \\
                             M_t & \text{otherwise} \end{cases} \\
        O_t &= \mathrm{NS}^{(a,b,c)}_k(U_t) \approx (U_t U_t^\top)^{-1/2} U_t \\
        W_{t+1} &= (1 - \eta\lambda) W_t - \eta\, s(A, B)\, O_t

    :math:`\mathrm{NS}_k` is :math:`k` (``ns_steps``) steps of the quintic
    Newton-Schulz iteration :math:`X \leftarrow aX + (bXX^\top + c(XX^\top)^2)X`
    started from :math:`X_0 = U/\max(\|U\|_F, \epsilon)` (every singular value
    in :math:`(0, 1]`), run on the wide orientation (the transpose when
    :math:`A > B`) and in **bfloat16**, as ``torch.optim.Muon`` and Jordan's
    reference do. The polynomial :math:`p(\sigma) = a\sigma + b\sigma^3 +
    c\sigma^5` acts on every singular value separately; its coefficients make
    the slope at 0 large (:math:`a = 3.4445`) so that small singular values
    grow fast, at the price of not converging exactly to 1: the result has
    singular values roughly in :math:`[0.7, 1.2]` instead of the exact
    polar factor :math:`UV^\top` of the SVD :math:`U_t = U\Sigma V^\top`.

    The scale :math:`s(A, B)` (``adjust_lr_fn``): ``None`` or ``"original"``:
    :math:`\sqrt{\max(1, A/B)}` (Jordan et al.); ``"match_rms_adamw"``:
    :math:`0.2\sqrt{\max(A, B)}` (Liu et al. 2025, so that the step's RMS matches
    AdamW's and AdamW's ``lr`` and ``weight_decay`` carry over). The weight
    decay uses the unscaled :math:`\eta`.

    Conventions (those of ``torch.optim.Muon``): the momentum buffer is an
    exponential average (``lerp``), not SGD's sum :math:`\beta M + G`; Nesterov
    is the default; only 2-D parameters are accepted (embeddings, the output
    head, biases and gains belong to AdamW: see the book's chapter for the
    split); complex parameters and sparse gradients are refused at the first
    step with torch's messages.

    Additions to ``torch.optim.Muon`` (keyword-only, defaults keep torch's
    behaviour): ``maximize``; ``foreach`` (the momentum update of all
    parameters in ``torch._foreach_*`` calls; the iteration is per matrix either
    way; torch's own ``foreach=True`` raises). DTensor parameters (FSDP2) are
    refused at construction with a ``TypeError``: the iteration multiplies
    whole matrices, which a shard does not hold (an all-gather per step is the
    distributed implementations' business).

    State per parameter: ``momentum_buffer`` (:math:`M_t`), as in torch.

    Args:
        params: iterable of 2-D parameters (or ``(name, parameter)`` pairs) or of
            dicts defining parameter groups.
        lr: learning rate :math:`\eta \ge 0`, float or 1-element tensor (default: 1e-3).
        weight_decay: decoupled weight decay :math:`\lambda \ge 0` (default: 0.1).
        momentum: :math:`\beta \ge 0` (default: 0.95).
        nesterov: Nesterov momentum (default: True).
        ns_coefficients: :math:`(a, b, c)` (default: (3.4445, -4.7750, 2.0315)).
        eps: :math:`\epsilon \ge 0` of the normalisation (default: 1e-7).
        ns_steps: :math:`k`, an integer in ``[0, 100)`` (default: 5).
        adjust_lr_fn: ``None``, ``"original"`` or ``"match_rms_adamw"`` (default: None).
        maximize: maximize the objective instead of minimizing (default: False).
        foreach: ``None`` (single-tensor loop on CPU, torch's rule) or a bool.

    References:
        Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein (2024), *Muon: An
        optimizer for hidden layers in neural networks*, kellerjordan.github.io/posts/muon.
        Liu et al. (2025), *Muon is Scalable for LLM Training*, arXiv:2502.16982.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
        eps: float = DEFAULT_EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        check_lr(lr)
        with torch_phrase(f"weight decay should be >= 0 but is: {weight_decay}"):
            check_nonnegative("weight_decay", weight_decay)
        with torch_phrase(f"momentum should be >= 0 but is: {momentum}"):
            check_nonnegative("momentum", momentum)
        check_nonnegative("eps", eps)
        if not isinstance(nesterov, bool):
            raise ValueError(f"Invalid nesterov: {nesterov!r} (must be True or False)")
        if (
            isinstance(ns_coefficients, (str, Tensor))
            or not hasattr(ns_coefficients, "__len__")
            or len(ns_coefficients) != 3
        ):
            raise ValueError(
                f"Invalid ns_coefficients: {ns_coefficients!r} (must be a tuple of exactly 3 "
                "numbers (a, b, c)) [torch.optim: Coefficients must be a tuple of exactly 3 values]"
            )
        for i, c in enumerate(ns_coefficients):
            _real_number(f"ns_coefficients[{i}]", c)
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 0 <= ns_steps < 100:
            raise ValueError(
                f"Invalid ns_steps: {ns_steps!r} (must be an integer in [0, 100)) "
                "[torch.optim: Number of steps must be less than 100 for computational efficiency]"
            )
        if adjust_lr_fn not in _ADJUST_LR_FNS:
            raise ValueError(
                f"Invalid adjust_lr_fn: {adjust_lr_fn!r} (must be None, 'original' or "
                f"'match_rms_adamw') [torch.optim: Adjust learning rate function {adjust_lr_fn} "
                "is not supported]"
            )
        _check_impl_flags("Muon", foreach=foreach)
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _check_new_group(self, index: int, group: dict[str, Any]) -> None:
        """Refuse DTensors (``TypeError``) and parameters that are not 2-D (``ValueError``,
        torch's message)."""
        _check_no_dtensor("Muon", index, group["params"],
                          "the Newton-Schulz iteration multiplies whole matrices")
        for j, p in enumerate(group["params"]):
            if p.ndim != 2:
                raise ValueError(
                    f"Invalid params: param_groups[{index}]['params'][{j}] "
                    f"has {p.ndim} dimensions (must be a 2-D matrix; give biases, gains, "
                    "embeddings and the output head to AdamW). [torch.optim: Muon only "
                    f"supports 2D parameters whereas we found a parameter with size: {p.size()}]"
                )

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p):
                raise RuntimeError("Muon does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
        bufs = [self._lazy_state(p, group)["momentum_buffer"] for p in params]
        muon(
            params,
            grads,
            bufs,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            nesterov=group["nesterov"],
            ns_coefficients=group["ns_coefficients"],
            ns_steps=group["ns_steps"],
            eps=group["eps"],
            adjust_lr_fn=group["adjust_lr_fn"],
            maximize=group["maximize"],
            foreach=group["foreach"],
        )


# --------------------------------------------------------------------------- #
# Functional core                                                              #
# --------------------------------------------------------------------------- #


def zeropower_via_newtonschulz(
    G: Tensor,
    ns_coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
    ns_steps: int = DEFAULT_NS_STEPS,
    eps: float = DEFAULT_EPS,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    r"""``ns_steps`` quintic Newton-Schulz steps towards the polar factor of the 2-D ``G``.

    Returns a tensor of ``dtype`` (bfloat16, as torch.optim.Muon; pass float64
    to watch the iteration without rounding) with the shape of ``G``, whose
    singular vectors are those of ``G`` and whose singular values are
    :math:`p^{(k)}(\sigma_i/\|G\|_F)` with :math:`p(x) = ax + bx^3 + cx^5`.
    """
    if G.ndim != 2:
        raise ValueError(f"Invalid G: {G.ndim} dimensions (must be a 2-D matrix)")
    a, b, c = ns_coefficients
    X = G.to(dtype)
    if G.size(0) > G.size(1):
        X = X.T  # work on the wide side: X X^T is the smaller Gram matrix
    X = X.div(X.norm().clamp(min=eps))  # every singular value now in [0, 1]
    for _ in range(ns_steps):
        gram = X @ X.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b X X^T + c (X X^T)^2
        X = torch.addmm(X, poly, X, beta=a)  # a X + poly X
    if G.size(0) > G.size(1):
        X = X.T
    return X


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """``lr`` times the shape-dependent scale s(A, B) of :class:`Muon`."""
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, A / B))
    else:  # "match_rms_adamw"
        ratio = 0.2 * math.sqrt(max(A, B))
    return lr * ratio


def muon(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_bufs: list[Tensor],
    *,
    lr: float | Tensor,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    maximize: bool = False,
    foreach: bool | None = None,
) -> None:
    """Functional Muon: update ``params`` and ``momentum_bufs`` in place. See :class:`Muon`."""
    impl = _resolve_impl(params, foreach)
    func = _multi_tensor_muon if impl == "foreach" else _single_tensor_muon
    func(
        params,
        grads,
        momentum_bufs,
        lr=_as_float(lr),
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=nesterov,
        ns_coefficients=ns_coefficients,
        ns_steps=ns_steps,
        eps=eps,
        adjust_lr_fn=adjust_lr_fn,
        maximize=maximize,
    )


def _single_tensor_muon(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_bufs: list[Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    maximize: bool,
) -> None:
    for W, G, M in zip(params, grads, momentum_bufs):
        if maximize:
            G = -G
        M.lerp_(G, 1 - momentum)  # M_t = beta M_{t-1} + (1 - beta) G_t
        U = G.lerp(M, momentum) if nesterov else M  # (1 - beta) G_t + beta M_t
        O = zeropower_via_newtonschulz(U, ns_coefficients, ns_steps, eps)
        W.mul_(1 - lr * weight_decay)  # decoupled weight decay, unscaled lr
        W.add_(O, alpha=-adjusted_lr(lr, adjust_lr_fn, W.shape))


def _multi_tensor_muon(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_bufs: list[Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    maximize: bool,
) -> None:
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads)  # type: ignore[assignment]  # a list (stubs: tuple)
    torch._foreach_lerp_(momentum_bufs, grads, 1 - momentum)
    updates = torch._foreach_lerp(grads, momentum_bufs, momentum) if nesterov else momentum_bufs
    for W, U in zip(params, updates):  # the iteration is a chain of matrix products per tensor
        O = zeropower_via_newtonschulz(U, ns_coefficients, ns_steps, eps)
        # (torch._foreach_mul_ rounds differently from mul_ in bfloat16: keep torch's op)
        W.mul_(1 - lr * weight_decay)
        W.add_(O, alpha=-adjusted_lr(lr, adjust_lr_fn, W.shape))
