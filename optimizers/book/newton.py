"""Second-order helpers for the chapter on curvature, Newton's method and quasi-Newton.

:func:`softmax_regression` builds L2-regularised multinomial logistic regression on a fixed
design: the loss, its gradient and its exact Hessian in NumPy (for Newton's method written from
scratch), and the same loss on torch tensors (for ``optimizers.LBFGS`` and
``torch.optim.LBFGS``), all on one flat parameter vector. Nothing here takes an optimizer step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["SoftmaxRegression", "softmax_regression"]


@dataclass(frozen=True)
class SoftmaxRegression:
    """``f(w) = mean_i cross_entropy(softmax(W^T x_i), y_i) + weight_decay / 2 ||w||^2``.

    ``w`` is the flat vector of ``W``, shape ``(d, K)`` in row-major order (``d`` features, the
    last column of the design being the constant 1 when ``bias=True``, ``K`` classes).

    Attributes:
        X: the design, ``(n, d)``; y: the labels, ``(n,)``; n_classes: ``K``.
        weight_decay: the L2 coefficient (it makes ``f`` strongly convex with ``mu >= weight_decay``).
        f, grad, hessian: NumPy objective, gradient ``(d K,)`` and Hessian ``(d K, d K)``.
        f_torch: the same objective on a torch tensor ``w`` of shape ``(d K,)``.
        x0: the zero vector (where every class is equally likely).
    """

    X: np.ndarray
    y: np.ndarray
    n_classes: int
    weight_decay: float
    f: Callable[[np.ndarray], float]
    grad: Callable[[np.ndarray], np.ndarray]
    hessian: Callable[[np.ndarray], np.ndarray]
    f_torch: Callable
    x0: np.ndarray


def _probabilities(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


def softmax_regression(X, y, weight_decay: float = 1e-3, bias: bool = True,
                       n_classes: int | None = None) -> SoftmaxRegression:
    """Multinomial logistic regression on ``(X, y)`` as a problem on a flat parameter vector.

    Args:
        X: features ``(n, p)``; y: integer labels ``(n,)`` in ``0..K-1``.
        weight_decay: L2 coefficient ``lambda >= 0`` (applied to every weight, bias included).
        bias: append a constant feature 1.
        n_classes: ``K`` (default ``y.max() + 1``).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, p) and y (n,), got {X.shape} and {y.shape}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if bias:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    n, d = X.shape
    K = int(y.max()) + 1 if n_classes is None else int(n_classes)
    Y = np.eye(K)[y]
    lam = float(weight_decay)

    def f(w):
        W = np.asarray(w, dtype=np.float64).reshape(d, K)
        Z = X @ W
        zmax = Z.max(axis=1, keepdims=True)
        logsumexp = zmax[:, 0] + np.log(np.exp(Z - zmax).sum(axis=1))
        return float(np.mean(logsumexp - Z[np.arange(n), y]) + 0.5 * lam * np.dot(w, w))

    def grad(w):
        w = np.asarray(w, dtype=np.float64)
        P = _probabilities(X @ w.reshape(d, K))
        return (X.T @ (P - Y) / n).ravel() + lam * w

    def hessian(w):
        # d^2 f / dW[a,k] dW[b,l] = mean_i x_ia x_ib (p_ik [k == l] - p_ik p_il) + lam [a,k == b,l]
        P = _probabilities(X @ np.asarray(w, dtype=np.float64).reshape(d, K))
        H = np.empty((d, K, d, K))
        for k in range(K):
            for l in range(k, K):
                c = (P[:, k] * (k == l) - P[:, k] * P[:, l]) / n
                block = (X * c[:, None]).T @ X
                H[:, k, :, l] = block
                H[:, l, :, k] = block
        H = H.reshape(d * K, d * K)
        H[np.diag_indices_from(H)] += lam
        return H

    def f_torch(w):
        import torch

        Xt = torch.from_numpy(X).to(w.dtype)
        yt = torch.from_numpy(y)
        logits = Xt @ w.reshape(d, K)
        return torch.nn.functional.cross_entropy(logits, yt) + 0.5 * lam * w.dot(w)

    return SoftmaxRegression(X=X, y=y, n_classes=K, weight_decay=lam, f=f, grad=grad,
                             hessian=hessian, f_torch=f_torch, x0=np.zeros(d * K))
